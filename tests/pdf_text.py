"""Text of a PDF printed by Chromium (Skia), without a PDF library: enough to find headings.

Skia writes PDF 1.4 without object streams; text is drawn with Type0 fonts whose ToUnicode
CMaps map 2-byte glyph codes to Unicode. This reads every object, inflates the streams, builds
each font's map from its ToUnicode CMap, and decodes the strings of every content stream with
the font selected by ``Tf``. Good for tests; not a general PDF parser.
"""
from __future__ import annotations

import re
import zlib

__all__ = ["pdf_text", "page_sizes"]

_OBJ = re.compile(rb"(\d+) 0 obj(.*?)endobj", re.S)


def _objects(data: bytes) -> dict[int, tuple[bytes, bytes | None]]:
    out = {}
    for m in _OBJ.finditer(data):
        body = m.group(2)
        stream = None
        s = body.find(b"stream")
        if s >= 0:
            head = body[:s]
            start = s + len(b"stream")
            start += 2 if body[start:start + 2] == b"\r\n" else 1
            end = body.rfind(b"endstream")
            raw = body[start:end].rstrip(b"\r\n")
            if b"/FlateDecode" in head:
                try:
                    raw = zlib.decompress(raw)
                except zlib.error:
                    raw = zlib.decompressobj().decompress(raw)
            body, stream = head, raw
        out[int(m.group(1))] = (body, stream)
    return out


def _cmap(stream: bytes) -> tuple[dict[int, str], int]:
    width = 2
    cs = re.search(rb"begincodespacerange\s*<([0-9A-Fa-f]+)>", stream)
    if cs:
        width = len(cs.group(1)) // 2
    mapping: dict[int, str] = {}

    def uni(h: bytes) -> str:
        h = h.decode()
        return bytes.fromhex(h).decode("utf-16-be", errors="replace")

    for block in re.findall(rb"beginbfchar(.*?)endbfchar", stream, re.S):
        for src, dst in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]*)>", block):
            mapping[int(src, 16)] = uni(dst)
    for block in re.findall(rb"beginbfrange(.*?)endbfrange", stream, re.S):
        for lo, hi, dst in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>",
                                      block):
            base = int(dst, 16)
            for k, code in enumerate(range(int(lo, 16), int(hi, 16) + 1)):
                mapping[code] = chr(base + k)
    return mapping, width


def pdf_text(data: bytes) -> str:
    """All text drawn in the PDF, in content-stream order."""
    objs = _objects(data)
    fonts: dict[int, tuple[dict[int, str], int]] = {}
    for num, (body, _) in objs.items():
        m = re.search(rb"/ToUnicode (\d+) 0 R", body)
        if m and int(m.group(1)) in objs and objs[int(m.group(1))][1] is not None:
            fonts[num] = _cmap(objs[int(m.group(1))][1])
    names: dict[bytes, int] = {}
    for body, _ in objs.values():
        for block in re.findall(rb"/Font\s*<<(.*?)>>", body, re.S):
            for name, ref in re.findall(rb"/(\w+) (\d+) 0 R", block):
                names[name] = int(ref)
    pieces = []
    token = re.compile(rb"/(\w+)\s+[\d.]+\s+Tf|<([0-9A-Fa-f]*)>|\(((?:\\.|[^\\)])*)\)|(T\*|Td|TD|ET)")
    for body, stream in objs.values():
        if stream is None or b"/Subtype /Image" in body or b"/FontFile" in body:
            continue
        if b"Tf" not in stream:
            continue
        font: tuple[dict[int, str], int] | None = None
        for m in token.finditer(stream):
            if m.group(1) is not None:
                font = fonts.get(names.get(m.group(1), -1))
            elif m.group(2) is not None and font is not None:
                mapping, width = font
                h = m.group(2)
                step = 2 * width
                pieces.append("".join(mapping.get(int(h[i:i + step], 16), "")
                                      for i in range(0, len(h) - step + 1, step)))
            elif m.group(4) is not None:
                pieces.append(" ")
    return "".join(pieces)


def page_sizes(data: bytes) -> list[tuple[float, float]]:
    """(width, height) in points of every page."""
    return [(float(a), float(b)) for a, b in
            re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", data)]
