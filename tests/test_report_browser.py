"""The QI report opened in a real browser: headless Chromium renders it without console errors.

Skipped when ``chromium`` is not on PATH (CI installs it in ``.ci/run``).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH")]

HOSTILE = '<script>console.error("xss ran")</script>'


def _screenshot(html: Path, png: Path, profile: Path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
           "--window-size=1280,4000", "--enable-logging=stderr", "--v=0",
           html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def _console_problems(log: str) -> list[str]:
    """Console messages and failed loads of the page (not Chromium's own D-Bus/GPU chatter)."""
    return [line for line in log.splitlines()
            if "CONSOLE" in line or "net::ERR" in line or "Content Security Policy" in line
            or "Refused to" in line]


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory):
    """Report of a small study whose therapist name is a script that would log an error."""
    from mfr_outcomes.report import build_report
    from mfr_outcomes.study import from_frames
    from mfr_outcomes.synthetic import generate_frames

    frames, _ = generate_frames(30, 4, measures=["pain_nrs", "odi"])
    s = frames["sessions"]
    first = s["therapist_id"].iloc[0]
    s["therapist_id"] = s["therapist_id"].where(s["therapist_id"] != first, HOSTILE)
    study = from_frames(frames["patients"], s, frames["measurements"])
    out = tmp_path_factory.mktemp("browser")
    return build_report(study, out / "report", min_cell=5, seed=1)


def test_report_renders_without_console_errors(hostile_report, tmp_path):
    from PIL import Image

    png = tmp_path / "report.png"
    log = _screenshot(hostile_report.html_path, png, tmp_path / "profile")
    assert png.exists() and png.stat().st_size > 50_000, "the screenshot is (nearly) empty"
    with Image.open(png) as im:
        assert im.size == (1280, 4000)
        gray = im.convert("L")
        colours = gray.getcolors(maxcolors=256 * 256) or []
        assert len(colours) > 20, "the page rendered as a flat image"
        # the top of the page holds the title: not blank
        top = gray.crop((0, 0, 1280, 200))
        assert top.getextrema()[0] < 128
    problems = _console_problems(log)
    assert not problems, "\n".join(problems)
    assert "xss ran" not in log


def test_report_is_readable_at_phone_width(hostile_report, tmp_path):
    """Narrow windows keep wide tables inside their scroll box; nothing errors."""
    png = tmp_path / "narrow.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
           "--window-size=420,2000", "--enable-logging=stderr", "--v=0",
           hostile_report.html_path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and png.exists() and png.stat().st_size > 10_000
    assert not _console_problems(proc.stderr)


# ---------------------------------------------------------------------------- print and phone

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--no-first-run", "--disable-component-update", "--disable-sync"]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def pdf(hostile_report, tmp_path_factory):
    out = tmp_path_factory.mktemp("pdf")
    path = out / "report.pdf"
    proc = _chromium(out, f"--print-to-pdf={path}", "--no-pdf-header-footer",
                     hostile_report.html_path.resolve().as_uri())
    assert proc.returncode == 0 and path.exists(), proc.stderr[-2000:]
    return path.read_bytes()


def test_pdf_has_every_section_on_a4_pages(hostile_report, pdf):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from pdf_text import page_sizes, pdf_text

    from mfr_outcomes.report import SECTION_TITLES

    sizes = page_sizes(pdf)
    assert sizes and all(abs(w - 595) < 2 and abs(h - 842) < 2 for w, h in sizes), sizes[:3]
    # a page break before every section: at least one page each, plus the title page
    assert len(sizes) >= len(SECTION_TITLES) + 1
    text = "".join(pdf_text(pdf).split())
    for title in SECTION_TITLES.values():
        assert "".join(title.split()) in text, title


def test_pdf_draws_every_figure_once(hostile_report, pdf):
    """A figure cut across two pages is drawn twice (once per page, clipped)."""
    import re
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from pdf_text import _objects

    objs = _objects(pdf)
    images = {num for num, (body, _) in objs.items() if b"/Subtype /Image" in body}
    n_figures = sum(len(s.figures) for s in hostile_report.sections.values())
    assert len(images) == n_figures
    draws = sum(len(re.findall(rb"/\w+ Do", stream)) for body, stream in objs.values()
                if stream is not None and b"/Subtype /Image" not in body)
    assert draws == n_figures


def _phone_page(report: Path, folder: Path) -> Path:
    """A page holding the report in a 390-pixel-wide frame (headless Chromium will not make a
    window narrower than 500 px). The copy of the report in the frame tells its parent its
    scroll width (the report itself runs no script)."""
    html = report.read_text(encoding="utf-8")
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    html = html.replace("</body>", "<script>window.addEventListener('load', function () {"
                        "parent.postMessage(document.documentElement.scrollWidth + ' ' + "
                        "window.innerWidth, '*');});</script></body>")
    (folder / "probe.html").write_text(html, encoding="utf-8")
    wrap = folder / "phone.html"
    wrap.write_text('<!DOCTYPE html><html><body style="margin:0"><iframe src="probe.html" '
                    'style="width:390px;height:1800px;border:0"></iframe><script>'
                    "window.addEventListener('message', function (e) {"
                    "document.body.setAttribute('data-sw', e.data);});</script></body></html>",
                    encoding="utf-8")
    return wrap


def test_report_fits_a_390_pixel_screen(hostile_report, tmp_path):
    """No horizontal scrolling of the page at 390 px: wide tables scroll inside their box."""
    from PIL import Image

    wrap = _phone_page(hostile_report.html_path, tmp_path)
    proc = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000",
                     "--window-size=500,1800", wrap.resolve().as_uri())
    m = re.search(r'data-sw="(\d+) (\d+)"', proc.stdout)
    assert m, proc.stderr[-1000:]
    width, viewport = int(m.group(1)), int(m.group(2))
    assert viewport == 390
    assert width <= viewport, f"the page is {width} px wide on a {viewport} px screen"
    png = tmp_path / "phone.png"
    proc = _chromium(tmp_path, f"--screenshot={png}", "--virtual-time-budget=5000",
                     "--window-size=500,1800", wrap.resolve().as_uri())
    assert proc.returncode == 0 and png.exists()
    with Image.open(png) as im:
        phone = im.convert("L").crop((0, 0, 390, 1800))
        assert len(phone.getcolors(maxcolors=256 * 256) or []) > 20
        assert phone.crop((0, 0, 390, 120)).getextrema()[0] < 128  # the title is there
