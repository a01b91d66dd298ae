"""CSV text into raw tables at the speed of Arrow, every record keeping its editor line number.

The bytes are scanned once with numpy: record boundaries (newlines outside quotes), the line each
record starts on, blank or whitespace-only records, records with the wrong number of fields and a
quote that is never closed. Arrow's CSV reader then parses the records as text (every column a
string, so nothing is coerced before the schema's own checks). The rare records that need a person's
attention (too many fields, an unterminated quote) are mended one by one and reported; a file whose
quoting the scan cannot follow (a quote in the middle of a cell) is read by Python's ``csv`` module
instead, with the same results.
"""
from __future__ import annotations

import csv
import io as _io
import logging
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

__all__ = [
    "CsvText",
    "ParsedCsv",
    "decode_csv",
    "sniff_sep",
    "parse_csv",
    "shown_lines",
]

log = logging.getLogger(__name__)

_QUOTE, _NL, _CR, _SPACE, _TAB = 34, 10, 13, 32, 9


class CsvReadError(ValueError):
    """The text cannot be read as CSV at all (no header); the caller turns it into a SourceError."""


@dataclass
class CsvText:
    """A text file as UTF-8 bytes (no byte-order mark), and what encoding it was read as."""

    data: bytes
    encoding: str


@dataclass
class ParsedCsv:
    """Records of one CSV file as text cells.

    Attributes
    ----------
    frame : DataFrame
        One column a header field (names made unique), every cell text ("" when empty).
    lines : ndarray of int64
        The editor line each record starts on (header is line 1).
    blank_lines : ndarray of int64
        Lines of blank or whitespace-only records (separators only count as blank too).
    problems : list of (int, str)
        (record index in *frame*, sentence) for records that were mended: too many fields, a quote
        never closed.
    """

    frame: pd.DataFrame
    lines: np.ndarray
    blank_lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    problems: list[tuple[int, str]] = field(default_factory=list)


def decode_csv(raw: bytes, encoding: str | None, name: str) -> CsvText:
    """UTF-8 bytes of a text file, with lone carriage returns as line ends (see `_decode`)."""
    text = _decode(raw, encoding, name)
    data = text.data
    crs = data.count(b"\r")
    if crs and crs != data.count(b"\r\n"):
        # classic Mac OS line ends (CR alone): every reader here splits on LF, so without this a
        # CR-only file would be one header line and no rows
        log.info("%s ends lines with a lone carriage return; read as line ends", name)
        text = CsvText(_LONE_CR.sub(b"\n", data), text.encoding)
    return text


_LONE_CR = re.compile(rb"\r(?!\n)")


def _decode(raw: bytes, encoding: str | None, name: str) -> CsvText:
    """UTF-8 bytes of a text file: as *encoding*, else UTF-8 (BOM or not), else Latin-1.

    Raises
    ------
    UnicodeError, LookupError
        When an explicit *encoding* does not fit (the caller names the file).
    """
    if encoding:
        text = raw.decode(encoding)
        return CsvText(text.lstrip("\ufeff").encode("utf-8"), encoding)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    buf = np.frombuffer(raw, np.uint8)
    if not len(buf) or buf.max() < 128:  # ASCII: nothing to check
        return CsvText(raw, "utf-8")
    try:
        raw.decode("utf-8")
        return CsvText(raw, "utf-8")
    except UnicodeDecodeError:
        log.info("%s is not UTF-8; reading it as Latin-1", name)
        return CsvText(raw.decode("latin-1").encode("utf-8"), "latin-1")


def sniff_sep(head: str) -> str:
    """The field separator: the candidate used most in the header line.

    Header names rarely contain separators, while data rows may hold decimal commas, so the
    header decides; ``csv.Sniffer`` breaks ties and handles a header without any candidate.
    """
    lines = head.splitlines()
    header = next((line for line in lines if line.strip()), "")
    counts = {d: header.count(d) for d in (";", ",", "\t", "|")}
    best = max(counts.values())
    winners = [d for d, n in counts.items() if n == best]
    if best and len(winners) == 1:
        return winners[0]
    try:
        return csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=",;\t|").delimiter
    except csv.Error:
        return winners[0] if best else ","


def shown_lines(lines: np.ndarray | list[int], limit: int = 10) -> str:
    """Line numbers as a short list: "3, 4, 9" or "3, 4, … and 12 more"."""
    lines = [int(x) for x in lines]
    text = ", ".join(map(str, lines[:limit]))
    return text + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


# ----------------------------------------------------------------------------- the scan

@dataclass
class _Scan:
    data: bytes
    sep: str
    starts: np.ndarray       # byte offset of each record (header included)
    ends: np.ndarray         # byte offset one past each record's content (before its newline)
    line_of: np.ndarray      # editor line of each record
    blank: np.ndarray        # record holds nothing but whitespace, separators and quotes
    quoted: bool             # the text has quotes
    quoted_newlines: bool
    unclosed: int | None     # byte offset of a quote never closed

    def field_counts(self) -> np.ndarray:
        """Fields of each record (separators outside quotes + 1); computed only when Arrow found
        a record with the wrong count."""
        buf = np.frombuffer(self.data, np.uint8)
        outside = buf == ord(self.sep)
        if self.quoted:
            outside &= np.bitwise_xor.accumulate((buf == _QUOTE).view(np.uint8)) == 0
        return np.add.reduceat(outside, self.starts, dtype=np.int64) + 1


def _blank_table(sep: str) -> np.ndarray:
    table = np.zeros(256, bool)
    table[[_SPACE, _TAB, _CR, _QUOTE, _NL, ord(sep)]] = True
    return table


def _scan(data: bytes, sep: str) -> _Scan | None:
    """Record boundaries of *data*; None when quotes sit mid-cell (the scan cannot follow them)."""
    buf = np.frombuffer(data, np.uint8)
    n = len(buf)
    sepb = ord(sep)
    empty = np.zeros(0, np.int64)
    nl = np.flatnonzero(buf == _NL)
    qpos = np.flatnonzero(buf == _QUOTE)
    quoted_newlines = False
    if len(qpos):
        inside = np.bitwise_xor.accumulate((buf == _QUOTE).view(np.uint8))  # 1 inside quotes
        opener = qpos[inside[qpos] == 1]
        closer = qpos[inside[qpos] == 0]
        edge = np.zeros(256, bool)
        edge[[sepb, _NL, _CR, _QUOTE]] = True
        before = np.where(opener > 0, buf[np.maximum(opener - 1, 0)], _NL)
        after = np.where(closer + 1 < n, buf[np.minimum(closer + 1, n - 1)], _NL)
        if not (edge[before].all() and edge[after].all()):
            return None
        if len(qpos) % 2:
            return _Scan(data, sep, empty, empty, empty, np.zeros(0, bool), True, False,
                         int(qpos[-1]))
        rec_nl = nl[inside[nl] == 0]
        quoted_newlines = len(rec_nl) < len(nl)
        del inside
    else:
        rec_nl = nl
    starts = np.concatenate([[0], rec_nl + 1])
    ends = np.concatenate([rec_nl, [n]])
    if starts[-1] >= n:  # text ends with a newline: no record after it
        starts, ends = starts[:-1], ends[:-1]
    table = _blank_table(sep)
    if not len(starts):
        return _Scan(data, sep, starts, ends, starts, np.zeros(0, bool), bool(len(qpos)),
                     False, None)
    # a blank record starts with a blank byte: look closer only at those
    cand = np.flatnonzero(table[buf[starts]])
    if len(cand) <= 50_000:
        blank = np.zeros(len(starts), bool)
        for r in cand:
            blank[r] = bool(table[buf[starts[r]:ends[r]]].all())
    else:  # every record starts with a quote or a space: one pass over the bytes
        blank = ~np.logical_or.reduceat(~table[buf], starts)
    if quoted_newlines:
        line_starts = np.concatenate([[0], nl + 1])
        line_of = np.searchsorted(line_starts, starts).astype(np.int64) + 1
    else:
        line_of = np.arange(1, len(starts) + 1, dtype=np.int64)
    return _Scan(data, sep, starts, ends, line_of, blank, bool(len(qpos)), quoted_newlines, None)


# ----------------------------------------------------------------------------- parsing

def _split_record(text: str, sep: str) -> list[str]:
    row = next(csv.reader(_io.StringIO(text, newline=""), delimiter=sep), [])
    return row


def _join_record(cells: list[str], sep: str) -> bytes:
    out = _io.StringIO()
    csv.writer(out, delimiter=sep, lineterminator="\n").writerow(cells)
    return out.getvalue().encode("utf-8")


def parse_csv(data: bytes, file: str, *, sep: str) -> ParsedCsv:
    """Parse UTF-8 CSV bytes into text cells, line numbers, blank lines and mended records.

    Parameters
    ----------
    data : bytes
        UTF-8 text without a byte-order mark.
    file : str
        Name used in sentences.
    sep : str
        One-character field separator.

    Returns
    -------
    ParsedCsv

    Raises
    ------
    CsvReadError
        When there is no header line.
    """
    problems: list[tuple[int, str]] = []
    scan = _scan(data, sep)
    if scan is not None and scan.unclosed is not None:
        # a quote never closed would swallow every line after it: read it as a plain character
        q = scan.unclosed
        line = int(data.count(b"\n", 0, q)) + 1
        last = int(data.count(b"\n")) + (0 if data.endswith(b"\n") else 1)
        mended = parse_csv(data[:q] + data[q + 1:], file, sep=sep)
        where = np.flatnonzero(mended.lines == line)
        idx = int(where[0]) if len(where) else None
        span = f"lines {line}–{last}" if last > line else f"line {line}"
        sentence = (f'a quote (") opened here is never closed, so {span} would be read as one '
                    f"cell; the quote is ignored and every line read as its own row")
        if idx is not None:
            mended.problems.append((idx, sentence))
            mended.problems.sort(key=lambda p: p[0])
        return mended
    if scan is None:
        return _parse_with_python(data, file, sep=sep)
    records = np.flatnonzero(~scan.blank)
    if not len(records):
        raise CsvReadError(f"{file} is empty: no header line")
    head = records[0]
    header = _split_record(data[scan.starts[head]:scan.ends[head]].decode("utf-8"), sep)
    ncol = len(header)
    body = records[1:]
    blank_lines = scan.line_of[scan.blank]
    blank_lines = blank_lines[blank_lines > scan.line_of[head]]
    lines = scan.line_of[body]
    names = _unique(header)
    after_head = np.arange(len(scan.starts)) > head
    special = np.flatnonzero(after_head & scan.blank)
    text = _assemble(data, scan, head, special, {})
    frame = _arrow_frame(text, names, sep, len(body), scan.quoted_newlines)
    if frame is not None:
        return ParsedCsv(frame, lines, blank_lines.astype(np.int64), problems)
    # Arrow met records with another field count than the header: mend them and read again
    bad = body[scan.field_counts()[body] != ncol]
    mended: dict[int, bytes] = {}
    for r in bad:  # rare: mend records whose field count differs from the header
        cells = _split_record(data[scan.starts[r]:scan.ends[r]].decode("utf-8"), sep)
        if len(cells) > ncol:
            extra = [c for c in cells[ncol:] if c.strip()]
            if extra:
                k = int(np.searchsorted(body, r))
                problems.append((k, f"{len(cells)} fields but the header has {ncol}; "
                                 f"extra values {', '.join(extra)} ignored"))
            cells = cells[:ncol]
        else:
            cells = cells + [""] * (ncol - len(cells))
        mended[int(r)] = _join_record(cells, sep)
    if mended:
        special = np.union1d(special, bad)
    text = _assemble(data, scan, head, special, mended)
    frame = _arrow_frame(text, names, sep, len(body), scan.quoted_newlines)
    if frame is None:  # Arrow saw other records than the scan: trust Python's csv module
        return _parse_with_python(data, file, sep=sep)
    return ParsedCsv(frame, lines, blank_lines.astype(np.int64), problems)


def _assemble(data: bytes, scan: _Scan, head: int, special: np.ndarray,
              mended: dict[int, bytes]) -> pa.Buffer:
    """The body records: blank records left out, mended records replaced (no copy when there is
    nothing to leave out)."""
    n = len(scan.starts)

    def start(r: int) -> int:
        return int(scan.starts[r]) if r < n else len(data)

    pos = start(head + 1)
    if not len(special):
        return pa.py_buffer(data).slice(pos)
    pieces: list[bytes] = []
    for r in special:
        pieces.append(data[pos:start(r)])
        if r in mended:
            pieces.append(mended[int(r)])
        pos = start(r + 1)
    pieces.append(data[pos:])
    return pa.py_buffer(b"".join(pieces))


#: Cells are read as Arrow dictionaries (each distinct text once, an integer a cell), as the
#: Parquet reader keeps them: the validator's text passes work on the codes, and a column of
#: session ids or measure names costs a fifth of plain strings' memory.
_DICT_TEXT = pa.dictionary(pa.int32(), pa.string())


def _arrow_frame(text: pa.Buffer, names: list[str], sep: str, n: int,
                 quoted_newlines: bool) -> pd.DataFrame | None:
    cols = [f"f{i}" for i in range(len(names))]
    if n == 0:
        return pd.DataFrame({c: pd.Series([], dtype="str") for c in names})
    try:
        table = pacsv.read_csv(
            pa.BufferReader(text),
            read_options=pacsv.ReadOptions(column_names=cols, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=sep, quote_char='"', double_quote=True,
                                              newlines_in_values=quoted_newlines,
                                              ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                column_types={c: _DICT_TEXT for c in cols}, strings_can_be_null=False,
                null_values=[], quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        log.info("Arrow could not parse the records (%s); using Python's csv module", exc)
        return None
    if table.num_rows != n:
        return None
    frame = table.to_pandas(types_mapper=pd.ArrowDtype, self_destruct=True, split_blocks=True)
    frame.columns = names
    return frame


def _parse_with_python(data: bytes, file: str, *, sep: str) -> ParsedCsv:
    """The row-by-row reader, for quoting the byte scan cannot follow."""
    text = data.decode("utf-8")
    reader = csv.reader(_io.StringIO(text, newline=""), delimiter=sep)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    blank: list[int] = []
    problems: list[tuple[int, str]] = []
    last = 0
    for record in reader:
        start = last + 1
        last = reader.line_num
        if not record or all(not cell.strip() for cell in record):
            if header is not None:
                blank.append(start)
            continue
        if header is None:
            header = record
            continue
        if len(record) > len(header):
            extra = [c for c in record[len(header):] if c.strip()]
            if extra:
                problems.append((len(rows), f"{len(record)} fields but the header has "
                                 f"{len(header)}; extra values {', '.join(extra)} ignored"))
            record = record[:len(header)]
        elif len(record) < len(header):
            record = record + [""] * (len(header) - len(record))
        rows.append(record)
        lines.append(start)
    if header is None:
        raise CsvReadError(f"{file} is empty: no header line")
    names = _unique(header)
    frame = pd.DataFrame(rows, columns=names, dtype="str") if rows else pd.DataFrame(
        {c: pd.Series([], dtype="str") for c in names})
    return ParsedCsv(frame, np.asarray(lines, np.int64), np.asarray(blank, np.int64), problems)


def _unique(names: list[str]) -> list[str]:
    from collections import Counter

    out: list[str] = []
    seen: Counter[str] = Counter()
    for name in names:
        new = name if not seen[name] else f"{name}.{seen[name]}"
        seen[name] += 1
        out.append(new)
    return out
