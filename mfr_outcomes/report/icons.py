"""The Making Data Count icons as small inline SVG for the HTML summary table (the figures draw
the same icons with :func:`mfr_outcomes.plots.mdc_icon`). Only the fixed icon names of
:mod:`mfr_outcomes.mdc` are accepted, so nothing from the data reaches the markup."""
from __future__ import annotations

from mfr_outcomes import mdc

__all__ = ["icon_svg"]

_COLOUR = {"common": "#7B7D7D", "improvement": "#289DE0", "concern": "#FAB428",
           "neither": "#361475", "pass": "#289DE0", "fail": "#FAB428", "hit": "#7B7D7D"}


def icon_svg(name: str) -> str:
    """An inline SVG of icon *name* with its meaning as title; "" for an unknown name.

    >>> icon_svg("pass").startswith("<svg")
    True
    >>> icon_svg("<script>")
    ''
    """
    if name not in mdc.VARIATION_ICONS and name not in mdc.ASSURANCE_ICONS:
        return ""
    word = name.split("_")[0]
    colour = _COLOUR["hit" if name == "hit_or_miss" else word]
    head = (f'<svg class="icon" viewBox="0 0 40 40" width="32" height="32" role="img" '
            f'aria-label="{mdc.icon_text(name)}"><title>{mdc.icon_text(name)}</title>'
            f'<circle cx="20" cy="20" r="17" fill="#fff" stroke="{colour}" stroke-width="3"/>')
    if name in mdc.ASSURANCE_ICONS:
        letter = {"pass": "P", "fail": "F", "hit_or_miss": "?"}[name]
        body = (f'<line x1="9" y1="27" x2="31" y2="27" stroke="{colour}" stroke-width="2.5"/>'
                f'<text x="20" y="23" text-anchor="middle" font-size="15" font-weight="bold" '
                f'fill="{colour}" font-family="sans-serif">{letter}</text>')
    else:
        if name == "common_cause":
            ys, letter = [22, 19, 23, 20, 22], ""
        elif name.endswith("high"):
            ys, letter = [28, 27, 26, 21, 18], "H"
        else:
            ys, letter = [18, 19, 20, 25, 28], "L"
        xs = [10, 15, 20, 25, 30]
        pts = " ".join(f"{x},{y}" for x, y in zip(xs, ys))
        dots = "".join(
            f'<circle cx="{x}" cy="{y}" r="2" fill="{colour if k >= 3 and letter else "#7B7D7D"}"/>'
            for k, (x, y) in enumerate(zip(xs, ys)))
        body = f'<polyline points="{pts}" fill="none" stroke="#7B7D7D" stroke-width="1"/>{dots}'
        if letter:
            body += (f'<text x="20" y="14" text-anchor="middle" font-size="10" '
                     f'font-weight="bold" fill="{colour}" font-family="sans-serif">{letter}</text>')
    return head + body + "</svg>"
