"""Multi-site fits from site summaries: each clinic shares pooled sufficient statistics, never rows.

A site summary holds, for one formula, the global cross-products (XᵀX, Xᵀy, yᵀy, n) and, per
class of patients with the same ZᵢᵀZᵢ (the same visits pattern), the class size, the sum of
Zᵢᵀ[X y] and a factor of its within-class scatter. That is everything the fast engine's profiled
REML criterion depends on (see ``models/fast.py``: groups that share ZᵢᵀZᵢ enter only through those
sums), so the fit on the union of the sites' rows is recovered exactly: pseudo-patients are
rebuilt with the same class sums and scatter (a Helmert basis orthogonal to the class mean), and
the fast engine fits them. No row, identifier or per-patient value is written; classes with fewer
than ``min_cell`` patients are withheld (their rows leave every sum) and the summary says so.

With enough sites (:data:`MIN_SITES_FOR_SITE_EFFECT`) the pooled model adds a site random
intercept (patients nested in sites), whose statistics follow from the patient intercept's.
"""
from __future__ import annotations

import hashlib
import io as _io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.models.spec import RandomBlock
from mfr_outcomes.scale.rowfree import RowFreeSpec

__all__ = [
    "SiteSummary",
    "SummaryError",
    "MIN_SITES_FOR_SITE_EFFECT",
    "summarize_frame",
    "summarize_study",
    "write_summary",
    "read_summary",
    "fit_from_summaries",
    "fit_from_summaries_cli",
]

#: Fewer sites than this give no usable estimate of a between-site variance (a variance from 3–4
#: levels is mostly noise and often singular), so the pooled model then has no site term.
MIN_SITES_FOR_SITE_EFFECT = 5
FORMAT = "mfr-outcomes site summary 1"


class SummaryError(ValueError):
    """A summary that cannot be made, read or pooled; the message is a sentence."""


@dataclass
class SiteSummary:
    """Pooled sufficient statistics of one site for one formula (no rows, no identifiers).

    Attributes
    ----------
    formula, response : str
    fixed_names : list of str
        Columns of the fixed-effects design, in order.
    blocks : list of dict
        The random terms: group, terms, correlated.
    n, n_patients : int
        Readings and patients summarised (after withholding).
    XtX, Xty, yty
        Global cross-products.
    C : ndarray (K, q, q)
        ZᵢᵀZᵢ of each class.
    count : ndarray (K,)
        Patients in each class.
    sums : ndarray (K, q, p + 1)
        Σ over the class of Zᵢᵀ[X y].
    scatter : ndarray (K, r, q (p + 1))
        F with FᵀF = the within-class scatter of Zᵢᵀ[X y] (r ≤ q (p + 1)).
    software, site : str
    notes : list of str
    """

    formula: str
    response: str
    fixed_names: list[str]
    blocks: list[dict[str, Any]]
    n: int
    n_patients: int
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    C: np.ndarray
    count: np.ndarray
    sums: np.ndarray
    scatter: np.ndarray
    software: str
    site: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def design(self) -> dict[str, Any]:
        """What must agree between summaries to pool them."""
        return {"formula": self.formula, "response": self.response,
                "fixed_names": list(self.fixed_names), "blocks": self.blocks}


# ----------------------------------------------------------------------------- making summaries

def summarize_frame(frame: pd.DataFrame, formula: str, *, min_cell: int = 1,
                    site: str = "") -> SiteSummary:
    """Summarise the rows of one site for *formula* (lme4 syntax, one grouping factor).

    Parameters
    ----------
    frame : DataFrame
        One row a reading (e.g. ``study.frame("pain_nrs")``).
    formula : str
        A model the fast engine fits: random terms on one grouping factor (the patient).
    min_cell : int
        Classes (patients with the same visit pattern) with fewer patients are withheld: their
        rows leave every sum, and a note says how many patients and readings that was.
    site : str
        A label for the site (never a patient's).

    Returns
    -------
    SiteSummary
    """
    from mfr_outcomes import __version__
    from mfr_outcomes.models.fast import layout_of, sufficient_statistics
    from mfr_outcomes.models.formula import build_spec

    spec = build_spec(frame, formula)
    lay, why = layout_of(spec)
    if lay is None or lay.q_outer:
        raise SummaryError(f"a site summary needs random terms on one grouping factor only; "
                           f"{why or 'this formula nests one factor in another'}")
    stats = sufficient_statistics(spec)
    G, q, p = stats.n_groups, lay.q_total, stats.p
    flat_c = np.ascontiguousarray(stats.ZtZ.reshape(q * q, G).T)
    vecs = np.concatenate([stats.ZtX, stats.Zty[:, None, :]], axis=1).reshape(q * (p + 1), G).T
    uniq, cls, count = np.unique(flat_c, axis=0, return_inverse=True, return_counts=True)
    cls = cls.ravel()
    small = np.flatnonzero(count < max(int(min_cell), 1))
    notes: list[str] = []
    XtX, Xty, yty, n = stats.XtX.copy(), stats.Xty.copy(), float(stats.yty), stats.n
    kept_groups = ~np.isin(cls, small)
    if len(small):
        rows = np.flatnonzero(~kept_groups[lay.inner_codes])
        Xw, yw = spec.X[rows], spec.y[rows]
        XtX -= Xw.T @ Xw
        Xty -= Xw.T @ yw
        yty -= float(yw @ yw)
        n -= len(rows)
        notes.append(f"{len(small)} class(es) of visit patterns with fewer than {min_cell} "
                     f"patients withheld ({int(count[small].sum())} patients, {len(rows)} "
                     f"readings): their rows are in no sum")
    keep = np.setdiff1d(np.arange(len(count)), small)
    m = q * (p + 1)
    scatter = np.zeros((len(keep), m, m))
    sums = np.zeros((len(keep), q, p + 1))
    for j, k in enumerate(keep):
        members = vecs[cls == k]
        total = members.sum(axis=0)
        sums[j] = total.reshape(q, p + 1)
        centred = members - total / len(members)
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        r = min(len(members) - 1, m, len(sv))
        scatter[j, :r] = sv[:r, None] * vt[:r]
    return SiteSummary(
        formula=formula, response=spec.response, fixed_names=list(spec.fixed_names),
        blocks=[{"group": b.group, "terms": list(b.terms), "correlated": bool(b.correlated)}
                for b in spec.blocks],
        n=int(n), n_patients=int(count[keep].sum()), XtX=XtX, Xty=Xty, yty=yty,
        C=uniq[keep].reshape(len(keep), q, q), count=count[keep].astype(np.int64), sums=sums,
        scatter=scatter, software=f"mfr_outcomes {__version__}", site=site,
        notes=list(spec.notes) + notes)


def summarize_study(study: Any, measure: str, *, model: str | None = "prepost",
                    formula: str | None = None, min_cell: int = 1,
                    site: str = "") -> SiteSummary:
    """Summarise a study: the pre/post model of *measure* (treatment visits, no therapist term)
    or any *formula* on ``study.frame(measure)``."""
    frame = study.frame(measure)
    if formula is None:
        if model != "prepost":
            raise SummaryError(f"model must be 'prepost' or a formula given; got {model!r}")
        from mfr_outcomes.models.domain import prepost_formula

        frame = frame[frame["technique"].astype(str) != "none"]
        formula = prepost_formula(therapist_term="")
    return summarize_frame(frame, formula, min_cell=min_cell, site=site)


# ----------------------------------------------------------------------------- files

_ARRAYS = ("XtX", "Xty", "C", "count", "sums", "scatter")


def _meta(s: SiteSummary) -> dict[str, Any]:
    return {"format": FORMAT, **s.design, "n": s.n, "n_patients": s.n_patients,
            "yty": repr(float(s.yty)), "software": s.software, "site": s.site, "notes": s.notes}


def _checksum(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode("utf-8"))
    for name in _ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def write_summary(summary: SiteSummary, path: str | os.PathLike) -> Path:
    """Write *summary* as an ``.npz`` file (arrays plus a JSON header with its checksum)."""
    arrays = {name: np.asarray(getattr(summary, name)) for name in _ARRAYS}
    meta = _meta(summary)
    meta["checksum"] = _checksum(meta, arrays)
    out = Path(path)
    buf = _io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    out.write_bytes(buf.getvalue())
    return out


def read_summary(path: str | os.PathLike) -> SiteSummary:
    """Read a summary written by :func:`write_summary`, checking its checksum."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {name: z[name] for name in _ARRAYS}
    except (OSError, KeyError, ValueError) as exc:
        raise SummaryError(f"{p.name} is not a site summary ({exc})") from None
    if meta.get("format") != FORMAT:
        raise SummaryError(f"{p.name} is not a site summary of this format (format "
                           f"{meta.get('format')!r}, expected {FORMAT!r})")
    stated = meta.pop("checksum", None)
    if stated != _checksum(meta, arrays):
        raise SummaryError(f"{p.name}: its checksum does not match its contents; the file was "
                           f"damaged or edited")
    return SiteSummary(
        formula=meta["formula"], response=meta["response"], fixed_names=meta["fixed_names"],
        blocks=meta["blocks"], n=int(meta["n"]), n_patients=int(meta["n_patients"]),
        XtX=arrays["XtX"], Xty=arrays["Xty"], yty=float(meta["yty"]), C=arrays["C"],
        count=arrays["count"], sums=arrays["sums"], scatter=arrays["scatter"],
        software=meta["software"], site=meta.get("site", "") or p.stem, notes=meta["notes"])


# ----------------------------------------------------------------------------- pooling

def _check_compatible(summaries: list[SiteSummary], names: list[str]) -> None:
    first = summaries[0]
    for s, name in zip(summaries[1:], names[1:]):
        if s.software != first.software:
            raise SummaryError(f"{name} was written by {s.software} but {names[0]} by "
                               f"{first.software}; make every summary with the same version")
        for key in ("formula", "response", "fixed_names", "blocks"):
            if s.design[key] != first.design[key]:
                raise SummaryError(f"{name} and {names[0]} differ in their {key.replace('_', ' ')}"
                                   f" ({s.design[key]!r} against {first.design[key]!r}); "
                                   f"summaries pool only for the same model and design")


def _helmert(c: int, r: int) -> np.ndarray:
    """c × r orthonormal columns, each orthogonal to the vector of ones (Helmert contrasts)."""
    H = np.zeros((c, r))
    for j in range(1, r + 1):
        H[:j, j - 1] = 1.0 / np.sqrt(j * (j + 1))
        H[j, j - 1] = -j / np.sqrt(j * (j + 1))
    return H


def _pseudo_patients(s: SiteSummary, q: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pseudo-patient ZᵢᵀZᵢ (G, q, q) and Zᵢᵀ[X y] (G, q, p + 1) with the site's class sums
    and within-class scatter."""
    Cs, Vs = [], []
    m = q * (p + 1)
    for C, c, total, F in zip(s.C, s.count, s.sums, s.scatter):
        c = int(c)
        r = min(c - 1, m)
        V = np.tile(total.reshape(m) / c, (c, 1))
        if r > 0:
            V += _helmert(c, r) @ F[:r]
        Cs.append(np.broadcast_to(C, (c, q, q)))
        Vs.append(V.reshape(c, q, p + 1))
    return np.concatenate(Cs), np.concatenate(Vs)


def _layout(blocks: list[dict[str, Any]], n_inner: int, site: bool, n_sites: int):
    from mfr_outcomes.models.fast import Layout

    block_level, block_offset, block_q, theta_pos = [], [], [], []
    off = 0
    for b in blocks:
        qb = len(b["terms"])
        block_level.append(0)
        block_offset.append(off)
        block_q.append(qb)
        for j in range(qb):
            for i in range(j, qb):
                theta_pos.append((0, off + i, off + j))
        off += qb
    if site:
        block_level.append(1)
        block_offset.append(0)
        block_q.append(1)
        theta_pos.append((1, 0, 0))
    return Layout(inner=blocks[0]["group"], outer="site" if site else None, q_inner=off,
                  q_outer=1 if site else 0, block_level=block_level, block_offset=block_offset,
                  block_q=block_q, theta_pos=theta_pos, inner_codes=np.zeros(0, np.int64),
                  outer_codes=None, n_inner=n_inner, n_outer=n_sites if site else 0)


def _intercept_index(blocks: list[dict[str, Any]]) -> int | None:
    off = 0
    for b in blocks:
        if "(Intercept)" in b["terms"]:
            return off + b["terms"].index("(Intercept)")
        off += len(b["terms"])
    return None


def pooled_statistics(summaries: list[SiteSummary], *, site: bool):
    """The fast engine's Stats and Layout of the pooled model (pseudo-patients, no rows)."""
    from mfr_outcomes.models.fast import Stats

    first = summaries[0]
    p = len(first.fixed_names)
    q = sum(len(b["terms"]) for b in first.blocks)
    parts = [_pseudo_patients(s, q, p) for s in summaries]
    C = np.concatenate([c for c, _ in parts])
    V = np.concatenate([v for _, v in parts])
    site_of = np.concatenate([np.full(len(c), k, np.int64) for k, (c, _) in enumerate(parts)])
    if site:
        i0 = _intercept_index(first.blocks)
        Cx = np.zeros((len(C), q + 1, q + 1))
        Cx[:, :q, :q] = C
        Cx[:, :q, q] = Cx[:, q, :q] = C[:, :, i0]
        Cx[:, q, q] = C[:, i0, i0]
        C = Cx
        V = np.concatenate([V, V[:, i0:i0 + 1]], axis=1)
    G = len(C)
    stats = Stats(
        n=sum(s.n for s in summaries), XtX=sum(s.XtX for s in summaries),
        Xty=sum(s.Xty for s in summaries), yty=float(sum(s.yty for s in summaries)),
        ZtZ=np.ascontiguousarray(C.transpose(1, 2, 0)),
        ZtX=np.ascontiguousarray(V[:, :, :p].transpose(1, 2, 0)),
        Zty=np.ascontiguousarray(V[:, :, p].T),
        outer_of=site_of if site else np.full(G, -1, np.int64),
        n_outer=len(summaries) if site else 0)
    return stats, _layout(first.blocks, G, site, len(summaries)), site_of, C


def fit_from_summaries(sources: list[Any], *, reml: bool = True, site_effect: bool | str = "auto",
                       df_method: str = "satterthwaite", options: dict | None = None) -> Any:
    """The mixed model on the union of the sites' rows, fitted from their summaries.

    Parameters
    ----------
    sources : list of path or SiteSummary
        Summaries of the same formula and design (``mfr-outcomes summarize``).
    reml : bool
        REML (default) or ML.
    site_effect : {"auto", True, False}
        Add a site random intercept (patients nested in sites): "auto" when there are at least
        :data:`MIN_SITES_FOR_SITE_EFFECT` sites and the patient term has an intercept.
    df_method : {"satterthwaite", "residual", "asymptotic"}
        Kenward-Roger needs the rows and is not available from summaries.
    options : dict, optional
        Passed to the fast engine (``gtol``, ``ftol``, ``maxiter``), as ``fit_mixed`` does.

    Returns
    -------
    MixedFit
        ``fixed_effects`` (Satterthwaite df from the pooled statistics), ``variance_components``,
        ``loglik``, ``aic``... equal to the fit on the pooled rows; ``fit.notes`` says what a fit
        without rows cannot give (BLUPs, fitted values, residuals, marginal means, R²).
    """
    from mfr_outcomes.models.fast import FastEngine

    if df_method == "kenward-roger":
        raise SummaryError("Kenward-Roger df need the rows; use satterthwaite with summaries")
    summaries, names = [], []
    for k, src in enumerate(sources):
        if isinstance(src, SiteSummary):
            summaries.append(src)
            names.append(src.site or f"summary {k + 1}")
        else:
            summaries.append(read_summary(src))
            names.append(Path(src).name)
    if not summaries:
        raise SummaryError("no summaries given")
    _check_compatible(summaries, names)
    first = summaries[0]
    has_intercept = _intercept_index(first.blocks) is not None
    if site_effect == "auto":
        site = len(summaries) >= MIN_SITES_FOR_SITE_EFFECT and has_intercept
    else:
        site = bool(site_effect)
        if site and not has_intercept:
            raise SummaryError("a site random intercept needs a patient random intercept in the "
                               "formula")
    stats, lay, site_of, C = pooled_statistics(summaries, site=site)
    result = FastEngine().fit_stats(stats, lay, reml=reml, light=True, options=options)
    notes = [f"formula: {first.formula}" + (" + (1 | site)" if site else ""),
             f"fitted from {len(summaries)} site summaries ({', '.join(names)}): "
             f"{stats.n} readings, {int(sum(s.n_patients for s in summaries))} patients"]
    if not site and len(summaries) > 1:
        notes.append(f"no site random intercept: {len(summaries)} sites (at least "
                     f"{MIN_SITES_FOR_SITE_EFFECT} needed to estimate a between-site variance)"
                     if site_effect == "auto" else "no site random intercept (site_effect=False)")
    notes.append("from summaries there are no rows: BLUPs, fitted values, residuals, marginal "
                 "means, R² and Kenward-Roger df are not available; fixed effects (Satterthwaite "
                 "df from the pooled statistics) and variance components are")
    for s, name in zip(summaries, names):
        notes += [f"{name}: {n}" for n in s.notes]
    return _summary_fit(first, result, stats, lay, site_of, C, site, reml, df_method, notes,
                        [s.site or n for s, n in zip(summaries, names)])


def _summary_fit(first: SiteSummary, result: Any, stats: Any, lay: Any, site_of: np.ndarray,
                 C: np.ndarray, site: bool, reml: bool, df_method: str, notes: list[str],
                 site_labels: list[str]) -> Any:
    from mfr_outcomes.models.fit import MixedFit

    i0 = _intercept_index(first.blocks)
    # readings per pseudo-patient (ZᵢᵀZᵢ of the intercept), for MixedFit's per-level counts
    per = np.rint(C[:, i0, i0]).astype(np.int64) if i0 is not None else \
        np.full(len(C), max(len(b["terms"]) for b in first.blocks), np.int64)
    codes = np.repeat(np.arange(len(C)), per)
    blocks = [RandomBlock(group=b["group"], terms=list(b["terms"]),
                          Z=np.zeros((0, len(b["terms"]))), codes=codes,
                          levels=pd.RangeIndex(len(C)), correlated=b["correlated"])
              for b in first.blocks]
    if site:
        blocks.append(RandomBlock(group="site", terms=["(Intercept)"], Z=np.zeros((0, 1)),
                                  codes=np.repeat(site_of, per),
                                  levels=pd.Index(site_labels)))
    spec = RowFreeSpec(formula=notes[0].removeprefix("formula: "), response=first.response,
                        y=np.zeros(0), X=np.zeros((0, len(first.fixed_names))),
                        fixed_names=list(first.fixed_names), blocks=blocks, data=pd.DataFrame(),
                        n_rows=int(stats.n))
    fit = MixedFit(spec, result, reml=reml, df_method=df_method,
                   engine_reason="fast: fitted from site summaries (pooled sufficient statistics)")
    fit.notes = notes
    fit.diagnostics["notes"] = list(notes)
    return fit


def fit_from_summaries_cli(args: Any) -> Any:
    """``mfr-outcomes fit --from-summaries``: the pooled fit, user errors as sentences."""
    from mfr_outcomes.cli import UserError

    if args.source:
        raise UserError("give either SOURCE or --from-summaries, not both")
    try:
        return fit_from_summaries(args.from_summaries, reml=not args.ml,
                                  df_method=args.df_method)
    except SummaryError as exc:
        raise UserError(str(exc)) from None
