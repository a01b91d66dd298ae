"""Build hook: compile the optional C kernel of the q = 2 pooled criterion
(``mfr_outcomes/models/_sym2c.c``) with the machine's C compiler, for wheels and editable installs.

The kernel has no dependency but Python's own headers. Where no compiler is found, or it fails,
the package installs as pure Python with a line on the build's output: ``pooled_sym2`` then runs
its NumPy formulas (the same numbers to rounding, slower small fits). ``MFR_OUTCOMES_PURE_PYTHON=1``
skips the kernel on purpose.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("mfr_outcomes") / "models" / "_sym2c.c"


def compile_kernel(root: Path) -> tuple[Path | None, str]:
    """Compile SOURCE next to itself; (the extension's path, "") or (None, why not)."""
    src = root / SOURCE
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = src.with_name("_sym2c" + suffix)
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        return None, f"no C compiler ({' '.join(cc) or 'cc'} not found)"
    include = sysconfig.get_paths()["include"]
    # no fast-math and no contraction into FMA: the same rounding on every machine
    cmd = [*cc, "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math",
           f"-I{include}", str(src), "-o", str(target), "-lm"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{' '.join(cmd)} failed: {exc}"
    if proc.returncode != 0:
        return None, f"{' '.join(cmd)} failed: {proc.stderr.strip()[-2000:]}"
    return target, ""


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if os.environ.get("MFR_OUTCOMES_PURE_PYTHON"):
            return
        root = Path(self.root)
        target, why = compile_kernel(root)
        if target is None:
            print(f"mfr_outcomes: the C kernel was not built, the package runs pure Python: "
                  f"{why}", file=sys.stderr)
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        # the compiled file is ignored by git; artifacts put it in the wheel all the same
        build_data["artifacts"].append(target.relative_to(root).as_posix())
