"""lme4 formulas on data frames: ``y ~ fixed + (terms | group)`` becomes a :class:`ModelSpec`.

The formula is parsed by the package's own grammar (:mod:`mfr_outcomes.models.grammar`: names,
numbers, formula operators and a fixed allow-list of functions; nothing is evaluated as Python) and
turned once into a typed :class:`~mfr_outcomes.models.design.Design`, which builds X, the random
blocks, the response and the offset. The random part follows lme4's ``findbars``/``mkReTrms``:
``(a + b | g)`` is one correlated block, ``(a + b || g)`` one uncorrelated block per column,
``(1 | a/b)`` expands to ``(1 | a) + (1 | a:b)``. Blocks are ordered by decreasing number of
levels, as lme4 orders them, so that θ has lme4's order. Fixed-effect names are formulaic's
(``technique[T.massage]``); a rank-deficient X loses the columns lme4 drops.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.linalg.lapack import dsyevd as _dsyevd

from mfr_outcomes.models import grammar as g
from mfr_outcomes.models.design import ColumnCache, Design, column_array
from mfr_outcomes.models.spec import ModelSpec, RandomBlock
from mfr_outcomes.models.threads import blas_threads

__all__ = ["ParsedFormula", "RandomTerm", "parse_formula", "build_spec", "fixed_matrix",
           "prepare_newdata", "lme4_kept_columns", "dqrdc2_rank"]


@dataclass(frozen=True)
class RandomTerm:
    """One ``(expr | group)`` term as written (before ``||`` splitting and ``/`` expansion)."""

    expr: str
    group: str
    correlated: bool


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed right-hand side and random terms.

    ``tree`` is the grammar's :class:`~mfr_outcomes.models.grammar.FormulaTree`; ``fixed_items``
    the signed fixed items of the right-hand side and ``bars`` the random terms, as nodes.
    """

    formula: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]
    tree: g.FormulaTree | None = None
    fixed_items: tuple = ()
    bars: tuple = ()

    @property
    def fixed_formula(self) -> str:
        return f"{self.response} ~ {self.fixed}"


def _render_items(items: list[tuple[str, object]]) -> str:
    out = ""
    for i, (sign, node) in enumerate(items):
        text = g.render(node)
        if i == 0:
            out = f"-{text}" if sign == "-" else text
        else:
            out += f" {sign} {text}"
    return out or "1"


def parse_formula(formula: str) -> ParsedFormula:
    """Parse an lme4 formula into its response, fixed part and random-effects terms.

    Parameters
    ----------
    formula : str
        For example ``"value ~ post * technique + (post | patient_id)"``.

    Returns
    -------
    ParsedFormula

    Raises
    ------
    ValueError
        A sentence naming what is wrong: no ``~`` or response, unbalanced parentheses, an empty
        random term, or a token outside the grammar (with its position).

    Examples
    --------
    >>> p = parse_formula("y ~ x + (1 | a/b) + (x || g)")
    >>> p.fixed, [(t.expr, t.group, t.correlated) for t in p.random]
    ('x', [('1', 'a/b', True), ('x', 'g', False)])
    """
    if isinstance(formula, str):
        return _parse_formula(formula)
    return _parse_formula.__wrapped__(formula)


@functools.lru_cache(maxsize=128)
def _parse_formula(formula: str) -> ParsedFormula:
    """parse_formula's work, kept per formula text (it does not depend on the data, and a
    ParsedFormula is not changed by its users)."""
    tree = g.parse(formula)
    fixed_items, bars = g.split_random(tree.rhs)
    g.expand_terms(fixed_items, formula)  # refuses what is not a term (numbers, cbind) early
    random = tuple(RandomTerm(g.render(b.expr), g.render(b.group).replace(" / ", "/"),
                              not b.double) for b in bars)
    return ParsedFormula(formula, g.render_expr(tree.response), _render_items(fixed_items), random,
                         tree, tuple(fixed_items), tuple(bars))


def prepare_newdata(spec: ModelSpec, newdata: pd.DataFrame) -> pd.DataFrame:
    """New rows coded as the fit's data were: the fit's categories, booleans as 0/1.

    Raises ValueError naming a level the model was not fitted on.
    """
    if spec.design is None:
        raise ValueError("This model spec was built by hand and has no Design, so it cannot code "
                         "new rows; build it with build_spec(data, formula).")
    nd = newdata.copy(deep=False)
    for col, cats in spec.design.categories.items():
        if col in nd.columns:
            bad = set(pd.Series(nd[col]).dropna().astype(str).unique()) - {str(c) for c in cats}
            if bad:
                raise ValueError(f"Column {col!r} has level(s) {sorted(bad)} that the model was not "
                                 f"fitted on (known: {list(cats)}).")
            nd[col] = pd.Categorical(nd[col].astype(object).where(nd[col].notna()),
                                     categories=list(cats))
    for col in spec.design.bool_columns:
        if col in nd.columns:
            nd[col] = nd[col].astype(float)
    return nd


def fixed_matrix(spec: ModelSpec, newdata: pd.DataFrame) -> np.ndarray:
    """The fixed-effects model matrix of *spec* evaluated on *newdata* (same columns as ``spec.X``).

    Categorical columns are given the categories seen in the fit, so that a new frame with one level
    only still produces every column.
    """
    return spec.design.fixed_matrix(prepare_newdata(spec, newdata))


def _exclusion_reasons(na: pd.DataFrame, any_na: np.ndarray, used: list[str]) -> pd.DataFrame:
    """One row per excluded observation: its index label and "missing value in a, b"."""
    rows = np.flatnonzero(any_na)
    if rows.size == 0:
        return pd.DataFrame([], columns=["row", "reason"])
    pattern = na.to_numpy()[rows]
    # One sentence per distinct pattern of missing columns, not one per row.
    uniq, inverse = np.unique(pattern, axis=0, return_inverse=True)
    texts = np.array([f"missing value in {', '.join(c for c, m in zip(used, u) if m)}"
                      for u in uniq], dtype=object)
    return pd.DataFrame({"row": list(na.index[rows]), "reason": list(texts[inverse.ravel()])})


def _sorted_str_codes(values: np.ndarray, categories: pd.Index | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Codes and levels of *values* as ``pd.factorize(values.astype(str), sort=True)`` gives them,
    converting only the distinct values to text (*values* are category codes when *categories*)."""
    codes, uniq = pd.factorize(values)
    if categories is not None:
        uniq = categories[np.asarray(uniq, dtype=np.int64)]
    labels = np.array([str(u) for u in uniq], dtype=object)
    order = np.argsort(labels, kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return rank[codes], labels[order]


def _fixed_width_keys(arr) -> np.ndarray | None:
    """One uint64 a row whose order is the text's byte order (UTF-8 byte order is code-point
    order, the order of Python's ``<`` and of Arrow's sort), when *arr* is Arrow-backed text in
    one chunk, without missing values, every value of the same length of 1-8 bytes (ids such
    as ``P001``); else None. Equal keys are equal texts."""
    ca = arr.__arrow_array__() if isinstance(arr, pd.arrays.ArrowStringArray) else None
    if ca is None or ca.num_chunks != 1:
        return None
    ch = ca.chunk(0)
    n = len(ch)
    if ch.null_count or n == 0:
        return None
    if pa.types.is_large_string(ch.type):
        odt = np.int64
    elif pa.types.is_string(ch.type):
        odt = np.int32
    else:
        return None
    bufs = ch.buffers()
    off = np.frombuffer(bufs[1], dtype=odt, count=n + 1, offset=ch.offset * np.dtype(odt).itemsize)
    start = int(off[0])
    width = (int(off[-1]) - start) // n
    if not 1 <= width <= 8 or (np.diff(off) != width).any():
        return None
    if width in (1, 2, 4, 8):  # big-endian integers: integer order = byte order
        return np.frombuffer(bufs[2], dtype=f">u{width}", count=n, offset=start).astype(np.uint64)
    # 3, 5, 6 or 7 bytes: eight bytes read from each row's start (rows overlap; the rows whose
    # eight bytes run past the data are padded by hand), the bytes of the next rows shifted out
    m = (n * width - 8) // width + 1 if n * width >= 8 else 0
    keys = np.empty(n, dtype=np.uint64)
    if m:
        keys[:m] = np.ndarray((m,), dtype=">u8", buffer=bufs[2], offset=start,
                              strides=(width,)) >> np.uint64(8 * (8 - width))
    if m < n:
        tail = np.zeros((n - m, 8), dtype=np.uint8)
        tail[:, 8 - width:] = np.frombuffer(bufs[2], dtype=np.uint8, count=(n - m) * width,
                                            offset=start + m * width).reshape(n - m, width)
        keys[m:] = tail.view(">u8").ravel()
    return keys


def _arrow_levels(arr, rows: np.ndarray) -> pd.Index:
    """``pd.Index(arr.take(rows))`` for an ``ArrowStringArray`` *arr* and valid row numbers
    *rows*: Arrow's take on the array's own data, wrapped in an array of *arr*'s dtype (pandas'
    ``take`` checks and converts the indices first: ~15 µs of a 200-patient fit)."""
    taken = arr.__arrow_array__().take(rows)
    if _STR_ARRAY_TAKES_DTYPE:
        return pd.Index(type(arr)(taken, dtype=arr.dtype), copy=False)
    out = type(arr)(taken)
    if out.dtype != arr.dtype:  # a pandas whose constructor gives another string dtype
        return pd.Index(arr.take(rows))
    return pd.Index(out, copy=False)


#: pandas 3's ArrowStringArray takes its dtype (NaN or NA semantics); pandas 2's sets its own
_STR_ARRAY_TAKES_DTYPE = "dtype" in inspect.signature(pd.arrays.ArrowStringArray).parameters


def _text_codes(arr) -> tuple[np.ndarray, pd.Index]:
    """Codes and sorted levels of a text column. Rows of one group usually sit together (frames
    sorted by patient), so the column is cut into runs of equal values first and only the run
    heads are factorised; when the heads are already strictly increasing they are the levels.
    Short ids of one length (:func:`_fixed_width_keys`) are compared as integers."""
    keys = _fixed_width_keys(arr)
    if keys is not None:
        n = keys.size
        change = np.empty(n, dtype=bool)
        change[0] = True
        np.not_equal(keys[1:], keys[:-1], out=change[1:])
        starts = np.flatnonzero(change)
        heads = keys[starts]
        if (heads[1:] > heads[:-1]).all():
            return np.cumsum(change, dtype=np.int64) - 1, _arrow_levels(arr, starts)
        _, firsts, inverse = np.unique(keys, return_index=True, return_inverse=True)
        return inverse.ravel().astype(np.int64), _arrow_levels(arr, firsts)
    n = len(arr)
    # Arrow-backed text without missing values: the comparisons in pyarrow.compute directly
    # (the same kernels pandas calls, without its wrapping: ~60 µs less at 2,000 rows)
    ca = arr.__arrow_array__() if isinstance(arr, pd.arrays.ArrowStringArray) else None
    if ca is not None and ca.null_count:
        ca = None
    change = np.ones(n, dtype=bool)
    if n > 1:
        if ca is not None:
            change[1:] = pc.not_equal(ca.slice(1), ca.slice(0, n - 1)).to_numpy()
        else:
            change[1:] = np.asarray(arr[1:] != arr[:-1], dtype=bool)
    starts = np.flatnonzero(change)
    run = np.cumsum(change, dtype=np.int64) - 1
    heads = arr.take(starts)
    if len(heads) < 2:
        return run, pd.Index(heads)
    if ca is not None:
        hc = heads.__arrow_array__()
        increasing = bool(pc.all(pc.greater(hc.slice(1), hc.slice(0, len(hc) - 1))).as_py())
    else:
        increasing = bool(np.asarray(heads[1:] > heads[:-1], dtype=bool).all())
    if increasing:
        return run, pd.Index(heads)
    codes, levels = pd.factorize(heads, sort=True)
    return codes.astype(np.int64)[run], pd.Index(levels)


def _group_codes(df: pd.DataFrame, gvars: tuple[str, ...]) -> tuple[np.ndarray, pd.Index]:
    """Codes of a grouping factor (levels sorted as text; ``a:b`` labels joined by ':')."""
    parts = []
    for v in gvars:
        a = column_array(df, v)
        if isinstance(a.dtype, pd.CategoricalDtype):
            parts.append(_sorted_str_codes(np.asarray(a.codes), a.categories))
        elif isinstance(a.dtype, pd.StringDtype):
            codes, uniq = _text_codes(a)
            if len(gvars) == 1:
                return codes, uniq
            parts.append((codes, np.asarray(uniq, dtype=object)))
        else:
            parts.append(_sorted_str_codes(a if isinstance(a, np.ndarray) else df[v].to_numpy()))
    if len(parts) == 1:
        codes, levels = parts[0]
        return codes.astype(np.int64), pd.Index(levels)
    combined = np.zeros(len(df), dtype=np.int64)
    for c, lv in parts:
        combined = combined * len(lv) + c
    uniq, inverse = np.unique(combined, return_inverse=True)
    rest = uniq.copy()
    pieces = []
    for _, lv in reversed(parts):
        pieces.append(lv[rest % len(lv)])
        rest = rest // len(lv)
    labels = np.array([":".join(t) for t in zip(*reversed(pieces))], dtype=object)
    order = np.argsort(labels, kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return rank[inverse.ravel()], pd.Index(labels[order])


def _missing(a) -> np.ndarray:
    """``frame[name].isna().to_numpy()`` from the column's array *a* (see
    :meth:`ColumnCache.array`) without the Series round trip (~40 µs a column in pandas 3)."""
    if isinstance(a, np.ndarray):
        kind = a.dtype.kind
        if kind in "iub":
            return np.zeros(len(a), dtype=bool)
        if kind in "fc":
            return np.isnan(a)
        return pd.isna(a)
    return np.asarray(a.isna(), dtype=bool)  # extension arrays: their own mask


def _check_columns(data: pd.DataFrame, parsed: ParsedFormula, used: list[str],
                   cols: ColumnCache) -> None:
    formula = parsed.formula
    resp = parsed.tree.response
    if isinstance(resp, g.Name) and resp.name not in data.columns:
        raise ValueError(f"The response {resp.name!r} is not a column of the data (columns: "
                         f"{', '.join(map(str, data.columns))}).")
    missing_cols = [v for v in used if v not in data.columns]
    if missing_cols:
        raise ValueError(f"The formula {formula!r} names column(s) {missing_cols} that the data do "
                         f"not have (columns: {', '.join(map(str, data.columns))}).")
    if not data.columns.is_unique:
        twice = [v for v in used if int((data.columns == v).sum()) > 1]
        if twice:
            raise ValueError(f"The formula {formula!r} uses column(s) {twice} that appear more "
                             f"than once in the data; rename them so that each name is one "
                             f"column.")
    for v in g.variables(resp):
        dt = cols.array(v).dtype
        if isinstance(dt, np.dtype) and dt.kind in "iufcb":
            continue  # NumPy numbers and booleans (pandas' type tests say the same, slower)
        if not (pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt)) or \
                isinstance(dt, pd.CategoricalDtype):
            col = cols[v]
            what = "response" if isinstance(resp, g.Name) else "response's column"
            raise ValueError(f"The {what} {v!r} must be numeric; it has type {col.dtype} "
                             f"(first values: {list(col.head(3))}).")


def _split_offsets(terms: list) -> tuple[list, list]:
    fixed, offsets = [], []
    for term in terms:
        calls = [f for f in term if isinstance(f, g.Call) and f.func == "offset"]
        if calls and len(term) > 1:
            raise ValueError(f"{g.render_expr(calls[0])} cannot be part of an interaction; write "
                             f"it as a term of its own.")
        (offsets if calls else fixed).append(calls[0] if calls else term)
    return fixed, offsets


def _prepare_columns(df: pd.DataFrame, factor_vars: list[str], notes: list[str],
                     cols: ColumnCache) -> pd.DataFrame:
    """The rows used, with the factor columns coded as the model sees them (no other copy);
    *cols*: the columns of *df*."""
    changed: dict[str, object] = {}
    for col in factor_vars:
        a = cols.array(col)
        dt = a.dtype
        if isinstance(dt, pd.CategoricalDtype):
            # codes + 1: missing values (-1) counted apart, without a masked copy (a code is
            # below the largest its integer type holds, so + 1 does not overflow)
            counts = np.bincount(np.asarray(a.codes) + 1, minlength=len(dt.categories) + 1)[1:]
            if not counts.all():
                unused = [c for c, k in zip(dt.categories, counts) if k == 0]
                notes.append(f"level(s) {unused} of {col!r} have no data among the rows used and "
                             f"were dropped")
                changed[col] = cols[col].cat.remove_unused_categories()
        elif isinstance(dt, np.dtype) and dt.kind in "iuf":
            continue  # numbers: as they are (the common case, without pandas' type tests)
        elif pd.api.types.is_bool_dtype(dt):
            changed[col] = cols[col].astype(int)
        elif not pd.api.types.is_numeric_dtype(dt):
            codes, levels = _sorted_str_codes(cols[col].to_numpy())
            changed[col] = pd.Categorical.from_codes(codes, categories=list(levels))
    if changed:
        df = df.copy(deep=False)
        for col, v in changed.items():
            df[col] = v
    return df


def build_spec(data: pd.DataFrame, formula: str) -> ModelSpec:
    """Evaluate an lme4 formula on a data frame.

    Parameters
    ----------
    data : DataFrame
        One row an observation. Categorical columns keep their category order (the first category
        is the reference level); string columns are treated as factors with sorted levels, as R does.
    formula : str
        lme4 syntax, e.g. ``"value ~ post * technique + session_number + (post | patient_id)"``;
        see ``docs/formulas.md`` for what the grammar accepts.

    Returns
    -------
    ModelSpec
        ``y``, ``X`` and one :class:`RandomBlock` per random term, for the rows without missing
        values in any variable used; the other rows are in ``spec.excluded`` (columns row, reason).
        ``spec.design`` is the typed :class:`~mfr_outcomes.models.design.Design`; ``spec.offset``
        the offset and ``spec.weights`` the binomial weights of ``cbind(s, f)`` (else None).
        ``spec.notes`` lists levels dropped because no used row has them and rank-deficient columns.

    Raises
    ------
    ValueError
        Bad formula, unknown column, non-numeric response, no usable rows, no random term.
    """
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"The data must be a pandas DataFrame, got {type(data).__name__}.")
    parsed = parse_formula(formula)
    if not parsed.random:
        raise ValueError(f"The formula {formula!r} has no random-effects term such as "
                         f"'(1 | patient_id)'; a mixed model needs at least one.")
    terms = _terms_of(formula) if type(formula) is str else _terms_of.__wrapped__(formula)
    used = list(terms.used)
    cols = ColumnCache(data)  # each column looked up once (see ColumnCache)
    _check_columns(data, parsed, used, cols)

    # Rows with missing values in any used variable are excluded, each with its reason.
    na_cols = {c: _missing(cols.array(c)) for c in used}
    any_na = np.zeros(len(data), dtype=bool)
    for mask in na_cols.values():  # (one call a column: reduce would stack them first)
        np.logical_or(any_na, mask, out=any_na)
    if any_na.any():
        excluded = _exclusion_reasons(pd.DataFrame(na_cols, index=data.index), any_na, used)
        df = data.loc[~any_na]
    else:
        excluded = _NO_EXCLUSIONS.copy()
        df = data
    if len(df) == 0:
        raise ValueError(f"No row of the data has all of {used} present, so nothing can be fitted.")
    notes: list[str] = []
    cols = cols if df is data else ColumnCache(df)
    prepared = _prepare_columns(df, list(terms.factor_vars), notes, cols)
    if prepared is not df:
        df, cols = prepared, ColumnCache(prepared)

    design = _design(parsed, terms, cols)
    X = design.fixed_matrix(cols, full=True)  # refuses a transformation that is not finite
    # lme4 drops rank-deficient fixed columns with a message (chkRank.drop.cols); so do we.
    with blas_threads(X.shape[1]):  # X'X is n × p: two BLAS threads only wait on a busy core
        keep = lme4_kept_columns(X)
    if keep.size < X.shape[1]:
        design = design.with_kept(keep)
        k = len(design.dropped)
        notes.append(f"fixed-effect model matrix is rank deficient so dropping {k} "
                     f"{'column / coefficient' if k == 1 else 'columns / coefficients'}: "
                     f"{', '.join(design.dropped)}")
        X = X[:, keep]
    names = design.fixed_names
    y = design.response(cols)
    weights = design.weights(cols)
    offset = design.offset(cols)
    for what, v in (("response", y), ("weights", weights), ("offset", offset)):
        if v is not None and not np.isfinite(v).all():
            raise ValueError(f"The {what} of {formula!r} is not finite on "
                             f"{int((~np.isfinite(v)).sum())} row(s) (first at row "
                             f"{df.index[np.flatnonzero(~np.isfinite(v))[0]]!r}).")

    blocks: list[RandomBlock] = []
    codes_cache: dict[tuple[str, ...], tuple[np.ndarray, pd.Index]] = {}
    for k, layout in enumerate(design.random):
        if layout.group_vars not in codes_cache:
            codes_cache[layout.group_vars] = _group_codes(cols, layout.group_vars)
        codes, levels = codes_cache[layout.group_vars]
        Z = design.random_matrix(k, cols)
        blocks.append(RandomBlock(group=layout.group, terms=list(layout.terms),
                                  Z=Z, codes=codes, levels=levels,
                                  correlated=layout.correlated))
    # lme4 (mkReTrms) orders terms by decreasing number of levels; the sort is stable.
    order = sorted(range(len(blocks)), key=lambda i: -blocks[i].n_levels)
    if order != list(range(len(blocks))):
        blocks = [blocks[i] for i in order]
        design = design.with_random_order(order)
    if design.notes != tuple(notes):
        design = replace(design, notes=tuple(notes))
    return ModelSpec(formula=formula, response=design.response_text, y=y, X=X,
                     fixed_names=names, blocks=blocks, data=df, excluded=excluded, design=design,
                     fixed_formula=parsed.fixed_formula, notes=notes, offset=offset,
                     weights=weights)


@dataclass(frozen=True)
class _Terms:
    """What build_spec reads of a formula before it looks at the data: the fixed terms and
    offsets, the columns used (response first), the columns the terms read."""

    fixed_terms: tuple
    offsets: tuple
    used: tuple[str, ...]
    factor_vars: tuple[str, ...]
    group_only: tuple[str, ...]


@functools.lru_cache(maxsize=128)
def _terms_of(formula: str) -> _Terms:
    parsed = parse_formula(formula)
    tree = parsed.tree
    fixed_terms, offsets = _split_offsets(g.expand_terms(list(parsed.fixed_items), formula))
    resp_vars = g.variables(tree.response)
    group_vars = [v for b in parsed.bars for v in g.variables(b.group)]
    term_vars = [v for b in parsed.bars for v in g.variables(b.expr)]
    term_vars += [v for t in fixed_terms for f in t for v in g.variables(f)]
    term_vars += [v for o in offsets for v in g.variables(o)]
    rest = set(term_vars) | set(group_vars)
    return _Terms(tuple(tuple(t) for t in fixed_terms), tuple(offsets),
                  tuple(resp_vars + sorted(rest - set(resp_vars))),
                  tuple(sorted(set(term_vars) - set(resp_vars))),
                  tuple(sorted(set(group_vars) - set(term_vars) - set(resp_vars))))


#: Designs already built, by formula and the types of the columns the terms read (see _design).
_DESIGNS: dict[tuple, Design] = {}
#: Categorical columns with more levels than this are not part of a design's key.
_KEY_LEVELS = 1000


def _design(parsed: ParsedFormula, terms: _Terms, cols: ColumnCache) -> Design:
    """The typed Design of *parsed* on the rows used (*cols*, factor columns as build_spec
    codes them). A Design depends on the data only through the types of the columns its terms
    read (a category's levels and their order are part of its type) unless a term learns from
    the values (``scale``, ``center``, ``poly``, ``factor`` of a non-categorical column); such
    a Design is built once per formula and column types and reused, so that a formula refitted
    to new data of the same shape (power simulation, bootstrap, a refit) builds X straight
    from it."""
    key: tuple | None = (parsed.formula,) if type(parsed.formula) is str else None
    for v in terms.factor_vars if key is not None else ():
        dt = cols.array(v).dtype
        if isinstance(dt, pd.CategoricalDtype):
            if len(dt.categories) > _KEY_LEVELS:
                key = None
                break
            cats = cols.categories(v)
            key += (v, "category", dt.ordered, cats, tuple(type(c).__name__ for c in cats))
        else:
            key += (v, dt)
    if key is not None:  # a grouping column's type matters only as bool or not (bool_columns)
        key += tuple(_is_bool_dtype(cols.array(v).dtype) for v in terms.group_only)
    design = _DESIGNS.get(key) if key is not None else None
    if design is not None:
        return design
    design = Design.build(parsed.tree, cols, fixed_terms=list(terms.fixed_terms),
                          offsets=list(terms.offsets), bars=list(parsed.bars))
    if key is not None and all(_type_only(f, cols) for f in design.factors.values()):
        if len(_DESIGNS) >= 64:
            _DESIGNS.pop(next(iter(_DESIGNS)))
        _DESIGNS[key] = design
    return design


def _is_bool_dtype(dt) -> bool:
    """``pd.api.types.is_bool_dtype(dt)`` for a dtype, without pandas' tests for the common
    NumPy and text dtypes (~4 µs a column)."""
    if isinstance(dt, np.dtype):
        return dt.kind == "b"
    if isinstance(dt, pd.StringDtype):
        return False
    return pd.api.types.is_bool_dtype(dt)


def _type_only(f, cols: ColumnCache) -> bool:
    """Whether factor *f* of a Design is decided by its column's type alone."""
    node = f.node
    if f.kind == "numeric":
        return not (isinstance(node, g.Call) and node.func in ("scale", "center", "poly"))
    return isinstance(cols[f.variable].dtype, pd.CategoricalDtype)


#: The exclusions of a frame without missing values (copied, never handed out itself).
_NO_EXCLUSIONS = pd.DataFrame({"row": pd.Series([], dtype=object),
                               "reason": pd.Series([], dtype=object)})


# ------------------------------------------------------------------- lme4's rank rule
def dqrdc2_rank(X: np.ndarray, tol: float) -> tuple[int, np.ndarray]:
    """R's LINPACK ``dqrdc2`` (``qr(X, tol)``): Householder QR that moves a column to the end only
    when its remaining norm falls below tol × its original norm. Returns (rank, pivot)."""
    x = np.array(X, dtype=float, order="F")
    n, p = x.shape
    qraux = np.sqrt((x * x).sum(axis=0))
    work1 = qraux.copy()
    work2 = np.where(qraux == 0.0, 1.0, qraux)
    piv = np.arange(p)
    k = p + 1  # 1-based, as the Fortran
    for l0 in range(min(n, p)):
        lnum = l0 + 1
        while lnum < k and qraux[l0] < work2[l0] * tol:
            order = list(range(l0)) + list(range(l0 + 1, p)) + [l0]
            x, piv = x[:, order], piv[order]
            qraux, work1, work2 = qraux[order], work1[order], work2[order]
            k -= 1
        if lnum == n:
            break
        col = x[l0:, l0]
        nrmxl = float(np.sqrt(col @ col))
        if nrmxl == 0.0:
            continue
        if col[0] != 0.0:
            nrmxl = np.copysign(nrmxl, col[0])
        col = col / nrmxl
        col[0] += 1.0
        x[l0:, l0] = col
        if l0 + 1 < p:
            rest = x[l0:, l0 + 1:]
            t = -(col @ rest) / col[0]
            rest += np.outer(col, t)
            x[l0:, l0 + 1:] = rest
            for j in range(l0 + 1, p):
                if qraux[j] == 0.0:
                    continue
                tt = max(1.0 - (abs(x[l0, j]) / qraux[j]) ** 2, 0.0)
                if abs(tt) < 1e-6:
                    qraux[j] = float(np.sqrt(x[l0 + 1:, j] @ x[l0 + 1:, j]))
                    work1[j] = qraux[j]
                else:
                    qraux[j] *= np.sqrt(tt)
        qraux[l0] = x[l0, l0]
        x[l0, l0] = -nrmxl
    return min(k - 1, n), piv


_EPS = float(np.finfo(float).eps)


def _eigvalsh(a: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of the symmetric *a* by LAPACK's ``dsyevd`` (NumPy's eigvalsh
    adds ~6 µs of checks a call); NumPy's when LAPACK reports a failure."""
    w, _, info = _dsyevd(a, compute_v=0, lower=1)
    return w if info == 0 else np.linalg.eigvalsh(a)


def lme4_kept_columns(X: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Indices (ascending) of the fixed columns lme4 keeps (``chkRank.drop.cols``).

    lme4 runs R's default ``qr(X, tol = 1e-7)`` (LINPACK ``dqrdc2``) and keeps the first *rank*
    pivots. That pivoting only moves a column whose remaining norm is below tol × its original
    norm, and the decision does not depend on column scale, so when the Gram matrix of the
    norm-scaled columns has λ_min / λ_max ≥ δ (every remaining norm is then at least √δ of the
    original, far above tol) every column is kept without the O(n p²) QR. δ = max(1e-9,
    1e3 n eps) exceeds the rounding of the computed eigenvalues by orders of magnitude.
    """
    n, p = X.shape
    if p == 0:
        return np.arange(0)
    if X.flags.f_contiguous and n > 50_000:
        from scipy.linalg.blas import dsyrk

        upper = dsyrk(1.0, X, trans=1)  # XᵀX: half the work of a general product (at 2,000
        G = upper + np.triu(upper, 1).T  # rows it is no faster; its lower triangle is zero)
    else:
        G = X.T @ X
    d = np.sqrt(G.diagonal())
    if np.isfinite(G).all() and (d > 0).all():
        lam = _eigvalsh(G / np.outer(d, d))
        if lam[0] >= max(1e-9, 1e3 * n * _EPS) * lam[-1]:
            return np.arange(p)
    rank, piv = dqrdc2_rank(X, tol)
    return np.sort(piv[:rank])
