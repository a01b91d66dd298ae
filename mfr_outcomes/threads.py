"""How many threads the data layer uses, and two pieces of work run side by side (in two
threads, or, for the report's other scopes, in a child process: :func:`forked`).

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

__all__ = ["ENV", "load_threads", "beside", "forked"]

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


def forked(work: Callable[[], A], parallel: bool, *, timeout: float = 900.0) -> Callable[[], A]:
    """Start *work* in a child process (``os.fork``) when *parallel*, and return a function
    that gives its result: the child's, read back through a pipe, or, when the child failed,
    could not start, or sent nothing for *timeout* seconds, ``work()`` run again in this
    process (so its error, if it has one, is raised here with its own sentence, and a result is
    always the serial order's). Without *parallel* (or without ``fork``) the returned function
    is *work* itself, run when called.

    The child runs only *work* with every warning ignored (it prints nothing), sends its
    result pickled (from this process's own code, never from user text) and leaves with
    ``os._exit``, so it never runs the parent's exit handlers nor flushes its buffers. Use it
    for pure work on data already in memory: the child's copy of the parent's memory is
    shared until written. A caller that will not collect the result (it failed meanwhile)
    calls the returned function's ``cancel`` (present, with the child's ``pid``, only when a
    child was started).
    """
    import pickle

    if not parallel or not hasattr(os, "fork"):
        return work
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return work
    if pid == 0:  # the child
        status = 1
        try:
            os.close(read_end)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                payload = pickle.dumps(work(), protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(payload)
            while view:
                view = view[os.write(write_end, view):]
            status = 0
        except BaseException:  # noqa: BLE001 - the parent runs the work again and raises
            pass
        finally:
            os._exit(status)
    os.close(write_end)
    import signal

    def reap(kill: bool) -> int:
        """Close the pipe, stop the child when *kill*, and wait for it: its exit status."""
        os.close(read_end)
        if kill:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): judge by what came
            return 0

    def collect() -> A:
        import select
        import time

        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        hung = False
        try:
            while True:
                ready, _, _ = select.select([read_end], [], [],
                                            max(deadline - time.monotonic(), 0.0))
                if not ready:  # the child hangs: stop it, and do the work here
                    hung, chunks = True, []
                    break
                chunk = os.read(read_end, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            status = reap(hung)
        if status != 0 or not chunks:
            return work()
        try:
            return pickle.loads(b"".join(chunks))
        except Exception:  # noqa: BLE001 - a cut message: do the work here
            return work()

    def cancel() -> None:
        """Stop the child when its result will not be collected (the caller failed)."""
        reap(True)

    collect.cancel = cancel  # type: ignore[attr-defined]
    collect.pid = pid  # type: ignore[attr-defined]
    return collect
