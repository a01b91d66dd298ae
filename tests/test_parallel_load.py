"""Loading with two threads (``MFR_OUTCOMES_THREADS``) gives what loading with one gives.

Validation runs patients and sessions in a second thread beside the readings
(:mod:`mfr_outcomes.threads`). The Study (frames, findings and their sentences, row accounting)
must not depend on the number of threads: on the shipped study, on a 10,000-patient simulated
study read from Parquet, and on every case of the frozen bad-file corpus. An error in the
worker thread surfaces as the same exception and sentence as serially, never as a traceback of
another thread.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pandas as pd
import pytest
import test_findings_snapshot as snap

import mfr_outcomes as mfr
from mfr_outcomes import schema, threads
from mfr_outcomes.findings import DataValidationError
from mfr_outcomes.warnings_ import MfrWarning

pytestmark = pytest.mark.filterwarnings("ignore::mfr_outcomes.warnings_.DataWarning")


def _load(monkeypatch: pytest.MonkeyPatch, n: int, source: object, **options: object):
    monkeypatch.setenv(threads.ENV, str(n))
    return mfr.load_study(source, **options)


def _same(a: mfr.Study, b: mfr.Study) -> None:
    assert a.report.to_dict() == b.report.to_dict()  # findings, sentences, accounting
    for name in ("patients", "sessions", "measurements"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)


def test_the_shipped_study_is_the_same_with_one_and_two_threads(monkeypatch):
    path = mfr.datasets.synthetic_path()
    _same(_load(monkeypatch, 1, path), _load(monkeypatch, 2, path))


def test_a_large_parquet_study_is_the_same_with_one_and_two_threads(monkeypatch, tmp_path):
    """10,000 simulated patients (1.3 M readings) written as Parquet, with a few faults laid in
    each table so that findings come from both threads."""
    from mfr_outcomes.synthetic import generate_frames

    frames, _ = generate_frames(n_patients=10_000, seed=11)
    p, s, m = (frames[k].copy() for k in ("patients", "sessions", "measurements"))
    p.loc[[3, 70], "age_years"] = [7, 130]                       # out of range
    p = pd.concat([p, p.iloc[[5]]], ignore_index=True)          # a repeated patient
    s.loc[[10, 11], "technique"] = ["Massage ", "reiki"]         # mended label, unknown one
    s.loc[20, "patient_id"] = "P-nobody"                         # orphan, and its readings cascade
    m.loc[[0, 100], "value"] = [-3.0, 1e6]                       # outside the measure's range
    m.loc[200, "phase"] = "NaN"                                  # a missing-value marker
    m = pd.concat([m, m.iloc[[300]]], ignore_index=True)         # a repeated reading
    for name, frame in (("patients", p), ("sessions", s), ("measurements", m)):
        frame.to_parquet(tmp_path / f"{name}.parquet", index=False)
    one, two = _load(monkeypatch, 1, tmp_path), _load(monkeypatch, 2, tmp_path)
    _same(one, two)
    rules = {f.rule for f in two.report.findings}
    assert {"out_of_range", "duplicate_key", "unknown_category", "orphan", "cascade",
            "missing_value", "duplicate_reading"} <= rules
    assert len(two.measurements) > 1_200_000


@pytest.mark.parametrize("case", snap.CASES)
def test_the_bad_file_corpus_is_the_same_with_one_and_two_threads(case, monkeypatch, tmp_path):
    options = {"dayfirst": True} if case == "x_semicolon_latin1" else {}
    source = snap._source(case, tmp_path)  # one source: its path is in the report
    _same(_load(monkeypatch, 1, source, **options), _load(monkeypatch, 2, source, **options))


def test_strict_raises_the_same_sentence_with_one_and_two_threads(monkeypatch, tmp_path):
    source = snap._source("many_faults", tmp_path)
    sentences = []
    for n in (1, 2):
        with pytest.raises(DataValidationError) as err:
            _load(monkeypatch, n, source, strict=True)
        sentences.append(str(err.value))
    assert sentences[0] == sentences[1] and "many_faults" in sentences[0]


def test_an_error_in_the_worker_thread_is_raised_as_serially(monkeypatch):
    """The patients' rules (worker thread) and the readings' (this thread) both fail: the
    patients' error wins, as in table order, with its own type and sentence."""
    real = schema._checks
    seen = set()

    def failing(t, specs, measures):
        seen.add((t.name, threading.current_thread() is threading.main_thread()))
        if t.name in ("patients", "measurements"):
            raise ValueError(f"{t.name} rules failed")
        return real(t, specs, measures)

    monkeypatch.setattr(schema, "_checks", failing)
    path = mfr.datasets.synthetic_path()
    for n in (1, 2):
        with pytest.raises(ValueError, match="^patients rules failed$"):
            _load(monkeypatch, n, path)
    assert ("patients", False) in seen  # with two threads, the patients ran in the worker
    assert ("measurements", True) in seen


def test_unreadable_files_give_the_same_source_error_with_one_and_two_threads(monkeypatch,
                                                                             tmp_path):
    """Patients and sessions are read in the worker beside the readings: with two unreadable
    files the first in table order is named, as when read one after the other."""
    from mfr_outcomes.io import SourceError

    src = mfr.datasets.synthetic_path()
    for name in ("patients", "sessions", "measurements"):
        pd.read_csv(Path(src) / f"{name}.csv").to_parquet(tmp_path / f"{name}.parquet")
    (tmp_path / "sessions.parquet").write_bytes(b"not parquet")
    (tmp_path / "measurements.parquet").write_bytes(b"PAR1 nor this")
    sentences = []
    for n in (1, 2):
        with pytest.raises(SourceError) as err:
            _load(monkeypatch, n, tmp_path)
        sentences.append(str(err.value))
    assert sentences[0] == sentences[1]
    assert sentences[0].startswith("sessions.parquet is not a readable Parquet file")


def test_an_error_in_the_cross_table_rules_of_the_worker_is_raised_as_serially(monkeypatch):
    def failing(s, p):
        raise KeyError("session_date")

    monkeypatch.setattr(schema, "session_dates", failing)
    path = mfr.datasets.synthetic_path()
    for n in (1, 2):
        with pytest.raises(KeyError, match="session_date"):
            _load(monkeypatch, n, path)


def test_beside_runs_the_first_piece_in_another_thread_and_keeps_serial_errors():
    where = []

    def first():
        where.append(threading.current_thread() is threading.main_thread())
        return "a"

    assert threads.beside(first, lambda: "b", 2) == ("a", "b") and where == [False]
    assert threads.beside(first, lambda: "b", 1) == ("a", "b") and where[-1] is True

    def boom():
        raise ZeroDivisionError("first")

    def other():
        raise LookupError("second")

    for n in (1, 2):
        with pytest.raises(ZeroDivisionError, match="first"):
            threads.beside(boom, other, n)
        with pytest.raises(LookupError, match="second"):
            threads.beside(lambda: 1, other, n)


@pytest.mark.parametrize("text, want", [("1", 1), ("3", 3), (" 2 ", 2)])
def test_threads_come_from_the_environment(monkeypatch, text, want):
    monkeypatch.setenv(threads.ENV, text)
    assert threads.load_threads() == want


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_a_bad_thread_count_warns_and_loads_with_one_thread(monkeypatch, text):
    monkeypatch.setenv(threads.ENV, text)
    with pytest.warns(MfrWarning, match=threads.ENV):
        assert threads.load_threads() == 1


def test_without_the_variable_two_threads_where_there_are_two_cores(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 8)
    assert threads.load_threads() == 2
    monkeypatch.setattr(threads.os, "cpu_count", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert threads.load_threads() == 1



@pytest.mark.parametrize("layout", ["shared", "distinct", "repeats", "one"])
def test_one_dictionary_a_column_equals_arrows_unifier(layout):
    """Parquet's batches share their row group's dictionary: each distinct dictionary is hashed
    once (cells._one_dictionary), and the codes and texts equal Arrow's unify_dictionaries."""
    import pyarrow as pa

    from mfr_outcomes.cells import _dictionary

    def chunk(codes, texts):
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(texts))

    d1, d2 = pa.array(["b", "a", "c"]), pa.array(["c", "d", "b"])
    if layout == "shared":  # two row groups of three batches, the dictionary buffers shared
        chunks = [pa.DictionaryArray.from_arrays(pa.array(c, pa.int32()), d)
                  for d in (d1, d2) for c in ([0, 1], [2, None], [1, 1])]
    elif layout == "distinct":
        chunks = [chunk([0, 2], ["b", "a", "c"]), chunk([1, 0, 2], ["c", "d", "b"])]
    elif layout == "repeats":  # a dictionary that repeats a text
        chunks = [chunk([0, 2], ["x", "y", "x"]), chunk([0, 1], ["x", "y", "x"])]
    else:
        chunks = [chunk([0, 1, 0], ["x", "y"])]
    col = pa.chunked_array(chunks)
    got = _dictionary(pd.Series(pd.arrays.ArrowExtensionArray(col)))
    unified = col.unify_dictionaries()
    texts = unified.chunk(0).dictionary.to_pylist()
    want = [None if i is None else texts[i]
            for c in unified.chunks for i in c.indices.to_pylist()]
    assert got.dictionary.to_pylist() == texts
    assert [None if i is None else texts[i] for i in got.indices.to_pylist()] == want
    assert got.indices.to_pylist() == [i for c in unified.chunks for i in c.indices.to_pylist()]


def test_csv_readings_load_in_one_thread_unless_the_variable_asks_for_more(monkeypatch):
    """Text readings default to one thread (two raised the peak memory of a 1.3 M-reading CSV
    load past four times the files' size); the variable still decides when set."""
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 8)
    assert threads.load_threads(text_readings=True) == 1
    assert threads.load_threads(text_readings=False) == 2
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.load_threads(text_readings=True) == 2
    seen = []
    real = threads.beside
    monkeypatch.delenv(threads.ENV)
    monkeypatch.setattr(schema, "beside", lambda a, b, n: seen.append(n) or real(a, b, n))
    mfr.load_study(mfr.datasets.synthetic_path())
    assert seen and set(seen) == {1}


def test_csv_read_as_dictionaries_gives_the_study_plain_strings_give(monkeypatch, tmp_path):
    """CSV cells are read as Arrow dictionaries and repeated numbers parsed once a distinct text
    (cells.few_distinct, cells.numbers on a Categorical). The Study, findings and sentences
    equal those of reading every cell as a plain string, on a file with faults in the numbers
    (words, a decimal comma, padding, missing-value markers) and in the keys."""
    import pyarrow as pa

    from mfr_outcomes import cells, csvread
    from mfr_outcomes.synthetic import generate_frames

    frames, _ = generate_frames(n_patients=300, seed=5)
    m = frames["measurements"].astype({"value": object}).copy()
    m.loc[[1, 2, 3], "value"] = ["abc", "7,5", " 6 "]
    m.loc[[10, 11], "value"] = ["NaN", "n/a"]
    m.loc[20, "value"] = "1e6"
    m.loc[30, "measure"] = "Pain_NRS "
    m = pd.concat([m, m.iloc[[40]]], ignore_index=True)
    frames["measurements"] = m
    for name, frame in frames.items():
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    few = []
    real = cells.few_distinct
    monkeypatch.setattr(schema, "few_distinct", lambda col: few.append(real(col)) or few[-1])
    coded = _load(monkeypatch, 1, tmp_path)
    assert True in few  # the value column went the once-a-distinct-text way
    monkeypatch.setattr(csvread, "_DICT_TEXT", pa.string())
    plain = _load(monkeypatch, 1, tmp_path)
    _same(coded, plain)
    text = str(coded.report)
    assert "value = abc, not a number" in text and "value = 7,5, not a number" in text


def test_numbers_of_a_categorical_equal_numbers_of_its_text():
    from mfr_outcomes.cells import numbers

    cells_ = ["1", "2.5", "2,5", "abc", None, "1e3", "inf", "2.5", "1"]
    for decimal in (".", ","):
        text = pd.Series(cells_, dtype="str")
        pd.testing.assert_series_equal(numbers(text.astype("category"), decimal),
                                       numbers(text, decimal), check_exact=True)


# ---------------------------------------------------------------------------- forked work


def test_forked_work_runs_in_a_child_process_and_returns_its_result():
    import os

    collect = threads.forked(lambda: (os.getpid(), {"a": [1, 2]}), True)
    pid, value = collect()
    assert pid == collect.pid
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped
    assert value == {"a": [1, 2]}
    assert pid != os.getpid()  # it ran in the child
    serial = threads.forked(lambda: os.getpid(), False)
    assert serial() == os.getpid()


def test_forked_work_that_fails_in_the_child_raises_its_own_error_here():
    def work():
        raise ValueError("a sentence naming the problem")

    collect = threads.forked(work, True)
    with pytest.raises(ValueError, match="a sentence naming the problem"):
        collect()


def test_forked_work_that_hangs_is_stopped_and_done_here():
    import os
    import time

    parent = os.getpid()

    def work():
        if os.getpid() != parent:
            time.sleep(60)  # the child hangs
        return "done here"

    t = time.perf_counter()
    assert threads.forked(work, True, timeout=1.0)() == "done here"
    assert time.perf_counter() - t < 30


def test_a_report_is_the_same_with_its_other_scopes_built_in_a_child_or_here(monkeypatch,
                                                                            tmp_path):
    """A site's report of a quarter, every CSV and the HTML byte for byte, with the other
    scopes' counts built in a child process (two threads) and in this one (one thread)."""
    from mfr_outcomes.report import build_report

    study = mfr.load_study(Path(__file__).resolve().parents[1] / "data" / "synthetic")
    out = {}
    for n in ("1", "2"):
        monkeypatch.setenv(threads.ENV, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_report(study, tmp_path / n, site="site-2", period="2026Q3", min_cell=5)
        out[n] = {p.relative_to(tmp_path / n): p.read_bytes()
                  for p in sorted((tmp_path / n).rglob("*")) if p.is_file()}
    assert len(out["1"]) > 10
    assert out["1"] == out["2"]


def test_forked_work_not_collected_is_cancelled_without_a_child_left():
    import os
    import time

    collect = threads.forked(lambda: b"x" * (1 << 22), True)  # more than a pipe holds
    time.sleep(0.2)
    collect.cancel()
    with pytest.raises(ChildProcessError):
        os.waitpid(collect.pid, os.WNOHANG)  # the child is gone and reaped (not a zombie)


def test_a_report_that_fails_leaves_no_child_behind(monkeypatch, tmp_path):
    """The other scopes' child is stopped and reaped when the report's own scope fails."""
    import os

    import mfr_outcomes.report.builder as builder
    from mfr_outcomes.report import build_report

    started = []

    def forked(work, parallel):
        started.append(threads.forked(work, True))
        return started[-1]

    real = builder._build_scope

    def build_scope(*args, figures, **kw):
        if figures:  # this report's own scope, in this process
            raise RuntimeError("the report's own scope failed")
        return real(*args, figures=figures, **kw)

    monkeypatch.setattr(builder, "forked", forked)
    monkeypatch.setattr(builder, "_build_scope", build_scope)
    study = mfr.load_study(Path(__file__).resolve().parents[1] / "data" / "synthetic")
    with pytest.raises(RuntimeError, match="own scope failed"):
        build_report(study, tmp_path / "out", site="site-1", min_cell=5)
    assert len(started) == 1 and hasattr(started[0], "pid")
    with pytest.raises(ChildProcessError):
        os.waitpid(started[0].pid, os.WNOHANG)
