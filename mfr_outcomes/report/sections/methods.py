"""Methods: scope, disclosure rules, models fitted, software, and what could not be built."""
from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.report.blocks import Section, Table
from mfr_outcomes.report.context import ReportContext
from mfr_outcomes.report.disclosure import SECONDARY_LABEL, suppressed_label

__all__ = ["build", "software"]


def build(ctx: ReportContext, sec: Section) -> None:
    o = ctx.options
    sec.para(
        f"Scope: {o.scope_text}. Source: {ctx.redactor.text(str(ctx.study.source))}. Main "
        f"measure: {ctx.m.label} ({o.measure}). Random seed: {o.seed} (recorded for "
        f"reproducibility; every analysis in this report is deterministic, so the same inputs "
        f"give the same report).")
    k = o.min_cell
    sec.para(
        f"Disclosure control. A count from 1 to {k - 1} is shown as '{suppressed_label(k)}' in "
        f"every table, sentence, figure and CSV, with the percentages and means computed from "
        f"it. A count of 0 is shown as 0: it names no one. A count shown as "
        f"'{SECONDARY_LABEL}' is not small: it is hidden because, with the totals this report "
        f"publishes (a table's total, 'all patients', rows read = used + excluded, readings = "
        f"pre + post, a count repeated in a sentence), it would let a small count be worked "
        f"out; every hidden count is checked by solving for it from everything published. "
        f"{_across_rule(ctx)} No patient or session identifier, and no value rejected by "
        f"validation, appears in the report or its CSV files.")
    rows = [_model_row(name, fit) for name, fit in ctx.fits.items()] + list(ctx.models)
    if rows:
        sec.para("Linear mixed models were fitted in lme4's parametrisation (REML unless "
                 "marked ML); p-values and intervals use Satterthwaite degrees of freedom as "
                 "lmerTest does.")
        ctx.add_table(sec, Table("models", "Models fitted (formulas in lme4 syntax).",
                                 pd.DataFrame(rows), counts=("observations", "patients")))
    else:
        sec.para("No model was fitted for this report.")
    ctx.add_table(sec, Table("software", "Software versions.", software()))
    sec.later(lambda: _closing(ctx))


def _across_rule(ctx: ReportContext) -> str:
    """The rule across the reports of the study, as this report applied it."""
    if ctx.options.all_sites_alone:
        return ("The all-sites report decided what it hides on its own; in a site's report a "
                "count is also hidden when, with the all-sites report and the other sites' "
                "reports (each all-sites count is the sum of the sites' counts), it or a count "
                "one of them hides could be worked out.")
    return ("The all-sites report and every site's report of this study and period take their "
            "share of one decision: a count is also hidden when, with all of these reports "
            "together (each all-sites count is the sum of the sites' counts), it or a count one "
            "of them hides could be worked out; the sites' reports hide the extra counts first, "
            "the all-sites report only those no site's count can protect.")


def _closing(ctx: ReportContext) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if ctx.failures:
        out += [("heading", "Parts that could not be built"), ("list", list(ctx.failures))]
    else:
        out.append(("para", "Every part of the report was built."))
    if ctx.cautions:
        out += [("heading", "Statistical and data cautions"), ("list", list(ctx.cautions))]
    return out


def _model_row(name: str, fit: Any) -> dict[str, Any]:
    diag = getattr(fit, "diagnostics", {}) or {}
    ngroups = getattr(fit, "ngroups", None)
    if isinstance(ngroups, dict):
        ngroups = ngroups.get("patient_id", next(iter(ngroups.values()), np.nan))
    return {"model": name, "formula": getattr(fit, "formula", ""),
            "engine": getattr(fit, "engine", ""), "df_method": getattr(fit, "df_method", ""),
            "observations": getattr(fit, "nobs", np.nan),
            "patients": ngroups if ngroups is not None else np.nan,
            "converged": diag.get("converged", np.nan), "singular": diag.get("singular", np.nan)}


def software() -> pd.DataFrame:
    rows = [("python", platform.python_version())]
    for pkg in ("mfr-outcomes", "numpy", "pandas", "scipy", "statsmodels",
                "matplotlib", "seaborn", "pandera", "jinja2"):
        try:
            rows.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    return pd.DataFrame(rows, columns=["package", "version"])
