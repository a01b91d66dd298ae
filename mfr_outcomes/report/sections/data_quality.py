"""Data quality: rows read, used and excluded, and findings by table, line and rule — never a
patient or session identifier nor a rejected value (those stay in ``validate``'s output and
``study.report``, which are for the data owner)."""
from __future__ import annotations

import pandas as pd

from mfr_outcomes.report.blocks import Section, Table, Text
from mfr_outcomes.report.context import ReportContext
from mfr_outcomes.report.fmt import is_missing, label

__all__ = ["build", "finding_sentence", "MAX_FINDINGS"]

#: Findings listed one by one (all are counted by rule).
MAX_FINDINGS = 200


def finding_sentence(row: pd.Series) -> str:
    """"patients.csv line 14: symptom_weeks — not a number; row kept." (no value, no id)."""
    # text files number lines; sheets, database tables and frames number rows
    unit = "line" if str(row["file"]).lower().endswith((".csv", ".txt", ".tsv")) else "row"
    where = (f"{row['file']} {unit} {row['line']}" if not is_missing(row["line"])
             else str(row["file"]))
    column = "" if is_missing(row["column"]) else f"{row['column']} — "
    return f"{where}: {column}{label(row['rule'])}; row {row['action']}."


def build(ctx: ReportContext, sec: Section) -> None:
    rep = ctx.study.report
    accounting = ctx.add_table(sec, Table(
        "row_accounting", "Rows read, used and excluded per table (read = used + excluded).",
        rep.summary(), counts=("read", "used", "excluded"), keys=("table",)))
    for r in range(len(accounting.frame)):
        ctx.ledger.relate(accounting.cell("read", r),
                          [accounting.cell("used", r), accounting.cell("excluded", r)])
    # problems in the source are counted and listed one by one (by line, never by value or
    # identifier): their counts are not counts of people, so they are not suppressed
    n_find = len(rep.findings)
    sec.para(Text.of(
        "Every row of the source was checked against the data model (required columns, types, "
        "valid ranges, vocabularies, keys, dates and the pairing of pre and post readings) "
        "before any analysis. The checks cover the whole source, not only the site and period "
        "of this report. They found ", str(n_find), " problem(s); rows that could not be used were "
        "excluded and counted, none was dropped silently."))
    if not n_find:
        sec.para("No problems were found: every row was used.")
        return
    frame = rep.to_frame()
    by_rule = (frame.groupby(["table", "rule", "action"], sort=False, observed=True)
               .size().rename("n").reset_index())
    by_rule["rule"] = by_rule["rule"].map(label)
    ctx.add_table(sec, Table("findings_by_rule", "Findings by table and rule (problems in "
                             "the source, each listed below).", by_rule))
    shown = frame.head(MAX_FINDINGS)
    listing = pd.DataFrame({
        "table": shown["table"], "file": shown["file"], "line": shown["line"],
        "column": shown["column"], "rule": shown["rule"].map(label),
        "action": shown["action"],
        "finding": [finding_sentence(row) for _, row in shown.iterrows()]})
    caption = "Findings, by table, line and rule (values and identifiers are withheld)"
    if len(frame) > MAX_FINDINGS:
        caption += f"; the first {MAX_FINDINGS}, all are counted above"
    ctx.add_table(sec, Table("findings", caption + ".", listing))
    sec.para("The rejected values themselves, and the patients and sessions they belong to, are "
             "not shown here: the data owner finds them in the output of "
             "'mfr-outcomes validate' or in study.report.")
