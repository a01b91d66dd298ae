# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif
RUN := $(UV) run --locked

.PHONY: install demo test lint synth notebooks bench reference clean

# --compile-bytecode: the dependencies' bytecode is written once here, so a fresh process (the CLI,
# a notebook kernel) does not compile pandas, scipy and pandera from source at every start; that
# is most of a cold start when PYTHONDONTWRITEBYTECODE is set (benchmarks/bench_startup.py)
install:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --locked --compile-bytecode
	@$(RUN) python -m compileall -q mfr_outcomes

demo: install
	$(RUN) mfr-outcomes demo --source data/synthetic --out build/demo

test: install
	$(RUN) ruff check mfr_outcomes tests benchmarks notebooks
	$(RUN) pytest -n 2 --durations=15

lint: install
	$(RUN) ruff check mfr_outcomes tests benchmarks notebooks

synth: install
	$(RUN) mfr-outcomes synth --patients 120 --seed 2026 --out data/synthetic

notebooks: install
	$(RUN) python -m mfr_outcomes.notebooks_runner --out build/notebooks

bench: install
	$(UV) sync --locked --group bench
	$(RUN) --group bench python benchmarks/bench_fit.py --out benchmarks/results

reference:
	for script in tests/reference/make_reference*.R; do echo "$$script"; Rscript "$$script" || exit 1; done

clean:
	rm -rf build .pytest_cache
