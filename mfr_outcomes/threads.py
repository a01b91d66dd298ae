"""How many threads the data layer uses, and two pieces of work run side by side.

Reading and validating the three tables is split in two: patients and sessions in a second
thread beside the readings in this one (``io._read_folder``, ``schema.validate_tables``). The
kernels (Arrow compute, NumPy, pandas' hash tables) release the GIL for much of their work, so the
small tables cost little wall time. ``MFR_OUTCOMES_THREADS=1`` keeps everything in the calling
thread (the order of the work is then the order written here); readings from a CSV file load that
way unless the variable asks for more (see :func:`load_threads`). The results are the same either
way.
"""
from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from typing import TypeVar

from mfr_outcomes.warnings_ import MfrWarning

__all__ = ["ENV", "load_threads", "beside"]

#: The environment variable that sets the number of threads (1: serial).
ENV = "MFR_OUTCOMES_THREADS"

A = TypeVar("A")
B = TypeVar("B")


def load_threads(text_readings: bool = False) -> int:
    """Threads for one load: ``MFR_OUTCOMES_THREADS`` when set (a whole number ≥ 1); else 1 when
    the readings come from a text file (*text_readings*), else 2 on a machine with two or more
    cores, else 1. Only 1 and more than 1 differ today (two pieces).

    Text readings load serially by default: Arrow's CSV reader already uses every core, the
    serial load is well inside the time goal (8 × Arrow's read), and with the two halves'
    temporaries alive at once the peak memory of a 1.3 M-reading CSV load rose from about 3.2 to
    about 4.3 times the files' size (``benchmarks/scale.md``). Columnar sources (Parquet, frames,
    sheets) gain a third of their wall time from the second thread."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return 1 if text_readings else min(2, os.cpu_count() or 1)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        warnings.warn(f"{ENV} = {text!r} is not a whole number of threads ≥ 1; loading with one "
                      f"thread", MfrWarning, stacklevel=3)
        return 1
    return value


def beside(first: Callable[[], A], second: Callable[[], B], threads: int) -> tuple[A, B]:
    """``(first(), second())``, *first* in a second thread while *second* runs in this one when
    *threads* > 1, else one after the other.

    Errors are those of the serial order: when *first* fails, its exception is raised (after
    *second* has finished, whatever it did), as if *second* had never run; the exception is the
    worker's own object, so its sentence (``SourceError``, ``ProfileError``) is unchanged.
    """
    if threads <= 1:
        a = first()
        return a, second()
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = first()
        except BaseException as exc:  # handed to the calling thread below
            box["error"] = exc

    worker = threading.Thread(target=run, name="mfr-outcomes-load", daemon=True)
    worker.start()
    failed: BaseException | None = None
    try:
        b = second()
    except BaseException as exc:  # raised below, after the worker's own error if it has one
        failed = exc
    worker.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    if failed is not None:
        raise failed
    return box["value"], b  # type: ignore[return-value]
