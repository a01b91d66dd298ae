"""The QI report opened in a real browser: headless Chromium renders it without console errors.

Skipped when ``chromium`` is not on PATH (CI installs it in ``.ci/run``).
"""
from __future__ import annotations

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
