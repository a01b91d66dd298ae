"""Execute the teaching notebooks from their jupytext sources with papermill, and export HTML.

``python -m mfr_outcomes.notebooks_runner --out build/notebooks`` (``make notebooks``) turns each
``notebooks/NN_name.py`` (jupytext percent format) into a notebook, runs it top to bottom in a
fresh ``python3`` kernel of this interpreter with ``PYTHONHASHSEED=0`` and the parameters given,
and writes ``NN_name.ipynb`` (with outputs) and ``NN_name.html`` into the output folder. The last
line a notebook prints is its key results as JSON; :func:`notebook_results` reads them back.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "NOTEBOOKS_DIR",
    "NotebookRun",
    "notebook_paths",
    "run_notebook",
    "run_all",
    "notebook_results",
    "main",
]

log = logging.getLogger(__name__)



def _notebooks_dir() -> Path:
    """The packaged notebooks (an installed wheel) or the checkout's ``notebooks/``."""
    from mfr_outcomes.datasets import notebooks_path

    try:
        return notebooks_path()
    except FileNotFoundError:  # neither: notebook_paths() says so when it is used
        return Path(__file__).resolve().parent.parent / "notebooks"


#: The notebooks folder: packaged with the wheel, or beside the package in a checkout.
NOTEBOOKS_DIR = _notebooks_dir()
KERNEL_NAME = "python3"


@dataclass(frozen=True)
class NotebookRun:
    """One executed notebook: where it went, how long it took, and its key results."""

    source: Path
    ipynb: Path
    html: Path | None
    seconds: float
    results: dict[str, Any]


def notebook_paths(folder: str | Path = NOTEBOOKS_DIR,
                   only: Sequence[str] | None = None) -> list[Path]:
    """The jupytext sources ``NN_*.py`` of *folder*, in order; *only* keeps names starting with
    one of its prefixes (``["01", "04_course"]``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"notebooks folder {folder} does not exist")
    paths = sorted(p for p in folder.glob("[0-9][0-9]_*.py"))
    if only:
        paths = [p for p in paths if any(p.stem.startswith(o) for o in only)]
    return paths


def _ensure_kernel(kernel_name: str) -> None:
    """Make sure *kernel_name* starts this interpreter (the venv's python), not another one."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        spec = None
    # jupyter_client replaces a bare "python"/"python3" argv[0] of the native kernel by
    # sys.executable; an absolute path to another interpreter would escape the venv.
    if spec is None or (kernel_name == KERNEL_NAME and os.path.isabs(spec.argv[0])
                        and Path(spec.argv[0]).resolve() != Path(sys.executable).resolve()):
        from ipykernel.kernelspec import install

        install(user=False, prefix=sys.prefix, kernel_name=kernel_name)
        log.info("registered kernel %s for %s", kernel_name, sys.executable)


@contextlib.contextmanager
def _kernel_environment() -> Iterator[None]:
    """Environment the kernel inherits: PYTHONHASHSEED=0 (reproducible set and dict orders of
    str hashes) and the inline matplotlib backend, even when the caller runs with Agg (the
    Makefile and the tests do), so figures appear in the executed notebooks."""
    wanted = {"PYTHONHASHSEED": "0", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _notebook_node(source: Path) -> Any:
    import jupytext
    import nbformat

    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    nbformat.validate(nb)
    return nb


def run_notebook(source: str | Path, out_dir: str | Path, *,
                 parameters: Mapping[str, Any] | None = None, html: bool = True,
                 kernel_name: str = KERNEL_NAME, timeout: int = 900,
                 cwd: str | Path | None = None) -> NotebookRun:
    """Execute one jupytext notebook with papermill.

    Parameters
    ----------
    source : path
        A jupytext percent ``.py`` file (or an ``.ipynb``).
    out_dir : path
        Folder for the executed ``.ipynb`` and its ``.html`` (created).
    parameters : mapping, optional
        Values injected after the cell tagged ``parameters``. A notebook's ``out_dir`` or
        ``export_dir`` not given here is set to a folder inside *out_dir*.
    html : bool
        Also export HTML with nbconvert.
    kernel_name : str
        Jupyter kernel; ``python3`` is made to resolve to this interpreter.
    timeout : int
        Seconds allowed per cell.
    cwd : path, optional
        Working directory of the kernel (default: the notebook's folder, so relative paths such
        as ``../data/synthetic`` work as they do in Jupyter).

    Returns
    -------
    NotebookRun
    """
    import nbformat
    import papermill as pm

    source = Path(source).resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _ensure_kernel(kernel_name)
    if source.suffix == ".py":
        nb = _notebook_node(source)
        input_path = out / f".{source.stem}.input.ipynb"
        nbformat.write(nb, input_path)
    else:
        nb = nbformat.read(str(source), as_version=4)
        input_path = source
    parameters = _with_output_folders(nb, source.stem, out, parameters)
    output = out / f"{source.stem}.ipynb"
    start = time.perf_counter()
    try:
        with _kernel_environment():
            pm.execute_notebook(str(input_path), str(output),
                                parameters=parameters,
                                kernel_name=kernel_name, cwd=str(cwd or source.parent),
                                progress_bar=False, log_output=False,
                                execution_timeout=timeout, request_save_on_cell_execute=False)
    finally:
        if input_path != source:
            input_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    html_path = None
    if html:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_filename(str(output))
        html_path = out / f"{source.stem}.html"
        html_path.write_text(body, encoding="utf-8")
    return NotebookRun(source, output, html_path, seconds, notebook_results(output))


#: Parameters naming folders a notebook writes to; left unset, they go under the output folder.
_FOLDER_PARAMETERS = ("out_dir", "export_dir")


def _with_output_folders(nb: Any, stem: str, out: Path,
                         parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Point a notebook's own output folders (``out_dir``, ``export_dir``) inside *out*, so that
    a run writes nothing outside its output folder unless asked to."""
    params = dict(parameters or {})
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    declared = cells[0].source if cells else ""
    for name in _FOLDER_PARAMETERS:
        if name not in params and f"{name} =" in declared:
            params[name] = str((out / f"{stem}_{name.removesuffix('_dir')}").resolve())
    return params


def notebook_results(path: str | Path) -> dict[str, Any]:
    """The key results an executed notebook printed as JSON on its last output line.

    Returns an empty dict when the notebook printed none.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in reversed(nb.cells):
        if cell.cell_type != "code":
            continue
        for output in reversed(cell.get("outputs", [])):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                lines = [ln for ln in output.get("text", "").splitlines() if ln.strip()]
                if lines:
                    try:
                        value = json.loads(lines[-1])
                    except json.JSONDecodeError:
                        return {}
                    return value if isinstance(value, dict) else {}
        if cell.get("outputs"):
            break
    return {}


def run_all(out_dir: str | Path, *, folder: str | Path = NOTEBOOKS_DIR,
            only: Sequence[str] | None = None, parameters: Mapping[str, Any] | None = None,
            html: bool = True) -> list[NotebookRun]:
    """Run every notebook of *folder* (or those in *only*) in order; stop at the first failure."""
    runs = []
    for path in notebook_paths(folder, only):
        log.info("running %s", path.name)
        runs.append(run_notebook(path, out_dir, parameters=parameters, html=html))
    return runs


def _parse_parameters(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"-p {item!r}: write NAME=VALUE, e.g. -p n_patients=40")
        try:
            params[name.strip()] = json.loads(text)
        except json.JSONDecodeError:
            params[name.strip()] = text  # a plain string such as a path
    return params


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m mfr_outcomes.notebooks_runner --out DIR [--only 01 ...]``."""
    parser = argparse.ArgumentParser(prog="python -m mfr_outcomes.notebooks_runner",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/notebooks", help="output folder")
    parser.add_argument("--notebooks", default=str(NOTEBOOKS_DIR), help="folder of NN_*.py")
    parser.add_argument("--only", nargs="*", default=None, metavar="PREFIX",
                        help="run only notebooks whose name starts with these (e.g. 01 04)")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="parameter passed to every notebook (JSON value or text)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML export")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = _parse_parameters(args.parameter)
    try:
        paths = notebook_paths(args.notebooks, args.only)
    except FileNotFoundError as exc:
        print(f"notebooks_runner: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print(f"notebooks_runner: no notebook NN_*.py in {args.notebooks}", file=sys.stderr)
        return 2
    import papermill as pm

    for path in paths:
        try:
            run = run_notebook(path, args.out, parameters=params, html=not args.no_html)
        except pm.PapermillExecutionError as exc:
            print(f"{path.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}",
                  file=sys.stderr)
            print(f"the partly executed notebook is {Path(args.out) / (path.stem + '.ipynb')}",
                  file=sys.stderr)
            return 1
        print(f"{path.name}: {run.seconds:.0f} s -> {run.ipynb}"
              + (f", {run.html}" if run.html else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
