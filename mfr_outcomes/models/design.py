"""The typed ``Design`` of a mixed model: a parsed formula plus the data's metadata, no rows.

A :class:`Design` is built once (:meth:`Design.build`) from the formula's tree
(:mod:`mfr_outcomes.models.grammar`) and the rows used: the kind of each factor (numeric or
categorical), factor levels in category order (sorted for strings and numbers), treatment contrasts
with the first level (or the ``Treatment`` level) as reference, the fixed-effect columns named as
formulaic names them (``technique[T.massage]``, ``post:technique[T.massage]``, ``C(week)[T.2]``),
the random-term layout, the response and the offsets. It then builds model-matrix rows for any
chunk of data (:meth:`~Design.fixed_matrix`, :meth:`~Design.random_matrix`,
:meth:`~Design.response`, :meth:`~Design.offset`) or renders the fixed columns as SQL
(:meth:`~Design.sql_columns`). Categorical codes become indicator columns and interactions are
products: there is no general formula machinery on this path, and nothing is evaluated as Python;
functions come from a fixed table of NumPy functions.

Which factor of an interaction gets full (all levels) or reduced (treatment) coding follows the
rule patsy and formulaic share, so that ``0 + f``, ``x:f`` without ``f`` and ``f:g`` give the same
columns as there.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from mfr_outcomes.models import grammar as g

__all__ = ["Factor", "Column", "FixedTerm", "RandomLayout", "Design", "ColumnCache", "column_array",
           "poly_coefs", "poly_matrix", "INTERCEPT"]

INTERCEPT = "(Intercept)"
_MATH = {"log": np.log, "log10": np.log10, "log2": np.log2, "log1p": np.log1p, "exp": np.exp,
         "sqrt": np.sqrt, "abs": np.abs}
_ARITH = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "**": np.power}
_SQL_MATH = {"log": "LN({})", "log10": "LOG10({})", "log2": "LOG2({})", "log1p": "LN(1 + {})",
             "exp": "EXP({})", "sqrt": "SQRT({})", "abs": "ABS({})"}


# ------------------------------------------------------------------------------ typed pieces
@dataclass(frozen=True)
class Factor:
    """One factor of the formula (``technique``, ``C(week)``, ``log(x)``, ``poly(x, 2)``)."""

    key: str  # its name as formulaic spells it
    node: object
    kind: str  # "numeric" | "categorical"
    variable: str | None = None  # the column of a categorical factor
    levels: tuple = ()  # categorical: levels in code order
    reference: int = 0  # categorical: index of the reference level
    width: int = 1  # numeric: number of columns (the degree of poly)
    params: tuple = ()  # stateful transforms: (mean, sd) of scale/center, (alpha, norm2) of poly


@dataclass(frozen=True)
class Column:
    """One model-matrix column: the product of its parts (factor key, level or column index)."""

    name: str
    parts: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class FixedTerm:
    """A fixed term (``post:technique``): its factors and the columns it produced."""

    label: str
    factors: tuple[str, ...]
    columns: tuple[str, ...]


@dataclass(frozen=True)
class RandomLayout:
    """One random-effects block: ``(expr | group)`` for one grouping factor (after ``/``
    expansion) and, for ``||``, one column."""

    group: str  # "patient_id", or "therapist_id:patient_id" when nested
    group_vars: tuple[str, ...]
    terms: tuple[str, ...]  # names of Z's columns
    columns: tuple[Column, ...]
    correlated: bool
    expr: str  # the left-hand side as written


@dataclass(frozen=True)
class Design:
    """A model's design: every decision about columns, made once; no row data.

    Attributes
    ----------
    columns, kept
        All fixed columns, and the indices kept after lme4's rank check; ``fixed_names`` the kept
        names. ``fixed_terms`` maps each term to its factors and columns (for type III tests).
    random
        One :class:`RandomLayout` per random block, in the order of ``ModelSpec.blocks``.
    categories
        column -> levels, for every column that enters as a factor (used to code new data).
    builder
        ``"lean"``: the matrices come from this module (no general formula library).
    """

    formula: str
    response_text: str
    response_kind: str  # "plain" | "cbind"
    response_nodes: tuple
    factors: dict[str, Factor]
    fixed_terms: tuple[FixedTerm, ...]
    columns: tuple[Column, ...]
    kept: tuple[int, ...]
    random: tuple[RandomLayout, ...]
    offsets: tuple
    categories: dict[str, tuple]
    bool_columns: tuple[str, ...]
    fixed_variables: tuple[str, ...]
    variables: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    builder: str = "lean"
    notes: tuple[str, ...] = field(default=())

    # -------------------------------------------------------------------------- construction
    @classmethod
    def build(cls, tree: g.FormulaTree, frame: pd.DataFrame, *, fixed_terms: list,
              offsets: list, bars: list[g.Bar]) -> Design:
        """Decide every column from the formula's terms and the rows used (*frame*)."""
        factors: dict[str, Factor] = {}
        numeric_vars: set[str] = set()
        all_terms = list(fixed_terms) + [t for b in bars for t in _bar_terms(b, tree.text)]
        for term in all_terms:
            for node in term:
                key = g.render_expr(node)
                if key not in factors:
                    factors[key] = _make_factor(key, node, frame)
                    if factors[key].kind == "numeric":
                        numeric_vars.update(g.variables(node))
        cat_vars = {f.variable: f for f in factors.values() if f.kind == "categorical"}
        categories = {v: f.levels for v, f in cat_vars.items() if v not in numeric_vars}
        fterms, columns = _code(fixed_terms, factors, intercept_name=INTERCEPT)
        layouts = []
        for bar in bars:
            expr_terms = _bar_terms(bar, tree.text)
            _, zcols = _code(expr_terms, factors, intercept_name=INTERCEPT)
            if not zcols:
                raise ValueError(f"The random term ({g.render(bar)}) has no columns.")
            expr = g.render(bar.expr)
            for group_vars in _group_parts(bar.group):
                parts = [tuple(zcols)] if not bar.double else [(c,) for c in zcols]
                for cols in parts:
                    layouts.append(RandomLayout(":".join(group_vars), group_vars,
                                                tuple(c.name for c in cols), cols,
                                                not bar.double, expr))
        fixed_vars = []
        for term in fixed_terms:
            for node in term:
                fixed_vars += [v for v in g.variables(node) if v not in fixed_vars]
        for node in offsets:
            fixed_vars += [v for v in g.variables(node) if v not in fixed_vars]
        resp = tree.response
        kind = "cbind" if isinstance(resp, g.Call) and resp.func == "cbind" else "plain"
        nodes = resp.args if kind == "cbind" else (resp,)
        rhs_vars = set(g.variables(tree.rhs))
        bools = tuple(c for c in frame.columns if c in rhs_vars
                      and pd.api.types.is_bool_dtype(frame[c]))
        variables = g.variables(tree.response) + [v for v in g.variables(tree.rhs)
                                                  if v not in g.variables(tree.response)]
        return cls(formula=tree.text, response_text=g.render_expr(resp), response_kind=kind,
                   response_nodes=tuple(nodes), factors=factors, fixed_terms=tuple(fterms),
                   columns=tuple(columns), kept=tuple(range(len(columns))),
                   random=tuple(layouts), offsets=tuple(offsets), categories=categories,
                   bool_columns=bools, fixed_variables=tuple(fixed_vars),
                   variables=tuple(variables))

    def with_kept(self, kept: np.ndarray) -> Design:
        """This design keeping only the fixed columns *kept* (ascending indices)."""
        kept_t = tuple(int(i) for i in kept)
        dropped = tuple(c.name for i, c in enumerate(self.columns) if i not in set(kept_t))
        return replace(self, kept=kept_t, dropped=dropped)

    def with_random_order(self, order: list[int]) -> Design:
        return replace(self, random=tuple(self.random[i] for i in order))

    # ------------------------------------------------------------------------------ accessors
    @property
    def all_names(self) -> list[str]:
        """Every fixed column's name, before the rank check."""
        return [c.name for c in self.columns]

    @property
    def fixed_names(self) -> list[str]:
        return [self.columns[i].name for i in self.kept]

    @property
    def random_exprs(self) -> dict[tuple[str, tuple[str, ...]], str]:
        return {(r.group, r.terms): r.expr for r in self.random}

    # ----------------------------------------------------------------------------- matrices
    def fixed_matrix(self, frame: pd.DataFrame, *, full: bool = False) -> np.ndarray:
        """The fixed-effects model matrix of *frame* (kept columns, or all when *full*)."""
        cols = self.columns if full else [self.columns[i] for i in self.kept]
        return _matrix(self, cols, frame)

    def random_matrix(self, k: int, frame: pd.DataFrame) -> np.ndarray:
        """Z (n × q) of random block *k* on *frame*."""
        return _matrix(self, self.random[k].columns, frame, order="C")

    def random_matrices(self, frame: pd.DataFrame) -> list[np.ndarray]:
        """Z of every random block on *frame*, in block order."""
        return [self.random_matrix(k, frame) for k in range(len(self.random))]

    def response(self, frame: pd.DataFrame) -> np.ndarray:
        """y: the response (for ``cbind(s, f)``, the proportion s / (s + f), as glmer)."""
        vals = [_numeric(n, frame, self.factors) for n in self.response_nodes]
        if self.response_kind == "cbind":
            s, f = vals
            with np.errstate(all="ignore"):
                return s / (s + f)
        return np.asarray(vals[0], dtype=float)

    def weights(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Prior weights: s + f for ``cbind(s, f)`` (glmer's convention), else None."""
        if self.response_kind != "cbind":
            return None
        s, f = (_numeric(n, frame, self.factors) for n in self.response_nodes)
        return s + f

    def offset(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The sum of the ``offset(...)`` terms on *frame*, or None when there is none."""
        if not self.offsets:
            return None
        out = np.zeros(len(frame))
        for node in self.offsets:
            out = out + _numeric(node.args[0], frame, self.factors)
        return out

    def factor_columns(self, key: str, frame: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
        """All-level indicator columns of a categorical factor (``f[T.level]``), or the numeric
        columns of a numeric one, on *frame* (the "rank-deficient" design of type III tests)."""
        f = self.factors[key]
        if f.kind == "categorical":
            codes = _codes(f, frame)
            return [(f"{key}[T.{lev}]", (codes == i).astype(float))
                    for i, lev in enumerate(f.levels)]
        vals = _factor_values(f, frame, self.factors)
        return [(_num_name(f, j), vals[:, j]) for j in range(f.width)]

    # ---------------------------------------------------------------------------------- SQL
    def sql_columns(self, quote=None, *, full: bool = False) -> list[tuple[str, str]]:
        """(name, SQL expression) of each fixed column, for DuckDB.

        Raises
        ------
        ValueError
            For what SQL cannot express here (``poly``).
        """
        quote = quote or (lambda name: '"' + str(name).replace('"', '""') + '"')
        cols = self.columns if full else [self.columns[i] for i in self.kept]
        out = []
        for col in cols:
            pieces = [_sql_part(self.factors[k], j, quote) for k, j in col.parts]
            out.append((col.name, " * ".join(pieces) if pieces else "1.0"))
        return out


# -------------------------------------------------------------------------------- factors
def _bar_terms(bar: g.Bar, text: str) -> list:
    return g.expand_terms(g.split_random(bar.expr)[0], text)


def _group_parts(node: object) -> list[tuple[str, ...]]:
    """``a/b/c`` -> [(a,), (a, b), (a, b, c)]; ``a:b`` -> [(a, b)]; ``g`` -> [(g,)]."""
    def names(n: object, op: str) -> list:
        if isinstance(n, g.Paren):
            return names(n.inner, op)
        if isinstance(n, g.BinOp) and n.op == op:
            return names(n.left, op) + names(n.right, op)
        return [n]

    chain = []
    for part in names(node, "/"):
        vs = names(part, ":")
        if not all(isinstance(v, g.Name) for v in vs):
            raise ValueError(f"The grouping factor '{g.render(node)}' must be column names joined "
                             f"by '/' (nesting) or ':' (interaction), as 'site_id/patient_id'.")
        chain.append(tuple(v.name for v in vs))
    return [tuple(v for p in chain[: i + 1] for v in p) for i in range(len(chain))]


class ColumnCache:
    """A frame read column by column during one build, each column looked up once.

    pandas 3 builds a new Series on every ``frame[name]`` (~20 µs); a model's build reads the
    same few columns 20-odd times. Offers what the builders read: ``[name]`` (a Series),
    :meth:`array` (the column's values without a Series, ~2 µs), :meth:`categories` (a
    categorical column's levels as a tuple), ``len``, ``columns`` and ``index``; ``frame`` is
    the frame itself.
    """

    __slots__ = ("frame", "_cols", "_arrays", "_cats")

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self._cols: dict = {}
        self._arrays: dict = {}
        self._cats: dict = {}

    def __getitem__(self, name: str) -> pd.Series:
        s = self._cols.get(name)
        if s is None:
            s = self._cols[name] = self.frame[name]
        return s

    def array(self, name: str) -> np.ndarray | pd.api.extensions.ExtensionArray:
        """The values of column *name*: a read-only ndarray for numbers, booleans and
        objects, else the array pandas keeps (``Categorical``, ``ArrowStringArray``,
        ``DatetimeArray``, ...)."""
        a = self._arrays.get(name)
        if a is None:
            a = self._arrays[name] = _frame_array(self.frame, name)
        return a

    def categories(self, name: str) -> tuple:
        """The categories of categorical column *name*, as a tuple of Python scalars."""
        c = self._cats.get(name)
        if c is None:
            levels = self.array(name).categories
            values = levels.array
            # Arrow-backed text levels: Arrow's own list of Python str (pandas' tolist of the
            # same strings costs ~7 µs more)
            c = self._cats[name] = tuple(
                values.__arrow_array__().to_pylist()
                if isinstance(values, pd.arrays.ArrowStringArray) else levels.tolist())
        return c

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def columns(self) -> pd.Index:
        return self.frame.columns

    @property
    def index(self) -> pd.Index:
        return self.frame.index


def _frame_array(frame: pd.DataFrame, name: str):
    """Column *name* of *frame* without building a Series (see :meth:`ColumnCache.array`).

    pandas' ``DataFrame._get_column_array`` (the array a Series would wrap) where the name is
    one column; a duplicated name, or a pandas without that method, goes through ``frame[name]``.
    """
    loc = frame.columns.get_loc(name)  # KeyError for an unknown column, as frame[name]
    getter = getattr(frame, "_get_column_array", None)
    if isinstance(loc, int) and getter is not None:
        a = getter(loc)
    else:
        s = frame[name]
        a = s.to_numpy() if isinstance(s.dtype, np.dtype) else s.array
    if isinstance(a, np.ndarray):
        a = a.view()
        a.flags.writeable = False  # a view of the caller's frame: never written through
    return a


def column_array(frame, name: str):
    """Column *name* of *frame* (a DataFrame or a :class:`ColumnCache`) as
    :meth:`ColumnCache.array` gives it."""
    if isinstance(frame, ColumnCache):
        return frame.array(name)
    return _frame_array(frame, name)


def _is_categorical(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.CategoricalDtype) or (
        not pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s))


def _make_factor(key: str, node: object, frame: pd.DataFrame) -> Factor:
    if isinstance(node, g.Call) and node.func in ("C", "factor"):
        var = node.args[0].name
        levels = _levels(frame[var])
        ref = 0
        if len(node.args) > 1:
            tr = node.args[1]
            want = (tr.args or (tr.kwargs[0][1],))[0]
            wanted = want.value if isinstance(want, g.Str) else want.value
            match = [i for i, lev in enumerate(levels) if lev == wanted or str(lev) == str(wanted)]
            if not match:
                raise ValueError(f"The reference level {wanted!r} in {key} is not a level of "
                                 f"{var!r} (levels: {list(levels)}).")
            ref = match[0]
        return Factor(key, node, "categorical", var, tuple(levels), ref)
    if isinstance(node, g.Name) and _is_categorical(frame[node.name]):
        return Factor(key, node, "categorical", node.name, tuple(_levels(frame[node.name])))
    if isinstance(node, g.Call) and node.func == "offset":
        raise ValueError(f"{key} cannot be part of an interaction; write it as a term of its own.")
    params: tuple = ()
    width = 1
    if isinstance(node, g.Call) and node.func in ("scale", "center", "poly"):
        x = _numeric(node.args[0], frame, {})
        if node.func == "poly":
            degree = int((node.args[1] if len(node.args) > 1 else node.kwargs[0][1]).text)
            params = poly_coefs(x, degree)
            width = degree
        else:
            sd = float(np.std(x, ddof=1)) if node.func == "scale" else 1.0
            params = (float(np.mean(x)), sd)
    return Factor(key, node, "numeric", None, (), 0, width, params)


def _levels(s: pd.Series) -> list:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return list(s.cat.categories)
    if pd.api.types.is_bool_dtype(s):
        return sorted(set(s.astype(int).tolist()))
    uniq = pd.unique(s.to_numpy())
    if pd.api.types.is_numeric_dtype(s):
        return sorted(uniq.tolist())
    return sorted({str(v) for v in uniq})


def _subsets(items: list) -> list[tuple]:
    """patsy's ``_subsets_sorted``: by size, then by position."""
    out = []
    for k in range(len(items) + 1):
        out += list(itertools.combinations(items, k))
    return out


def _simplify(subterms: list[frozenset]) -> None:
    """patsy's absorption: (a-) with (a-, b-) becomes (a-, b+), repeatedly, left to right."""
    changed = True
    while changed:
        changed = False
        for si, short in enumerate(subterms):
            for li in range(si + 1, len(subterms)):
                long = subterms[li]
                if len(long) - len(short) == 1 and long > short:
                    ((k, _),) = long - short
                    subterms[li] = short | {(k, True)}
                    subterms.pop(si)
                    changed = True
                    break
            if changed:
                break


def _code(terms: list, factors: dict[str, Factor], intercept_name: str
          ) -> tuple[list[FixedTerm], list[Column]]:
    """Columns of each term: numeric factors multiply in; each categorical factor gets full or
    reduced (treatment) coding by the rule patsy and formulaic share."""
    used: dict[frozenset, set] = {}
    out_terms, columns = [], []
    for term in terms:
        keys = [g.render_expr(n) for n in term]
        if not keys:
            used.setdefault(frozenset(), set()).add(frozenset())
            columns.append(Column(intercept_name, ()))
            continue
        num = frozenset(k for k in keys if factors[k].kind == "numeric")
        cats = [k for k in keys if factors[k].kind == "categorical"]
        bucket = used.setdefault(num, set())
        subterms = [frozenset((k, False) for k in sub) for sub in _subsets(cats)]
        subterms = [s for s in subterms if s not in bucket]
        bucket.update(subterms)
        _simplify(subterms)
        names = []
        for sub in subterms:
            coding = dict(sub)
            combos: list[tuple[tuple, list[str]]] = [((), [])]
            for k in keys:
                f = factors[k]
                if f.kind == "numeric":
                    opts = [((k, j), _num_name(f, j)) for j in range(f.width)]
                elif k in coding:
                    if coding[k]:
                        opts = [((k, i), f"{k}[{lev}]") for i, lev in enumerate(f.levels)]
                    else:
                        opts = [((k, i), f"{k}[T.{lev}]") for i, lev in enumerate(f.levels)
                                if i != f.reference]
                else:
                    continue
                combos = [(p + (o,), n + [nm]) for o, nm in opts for p, n in combos]
            for parts, nm in combos:
                columns.append(Column(":".join(nm), parts))
                names.append(":".join(nm))
        out_terms.append(FixedTerm(":".join(keys), tuple(keys), tuple(names)))
    return out_terms, columns


def _num_name(f: Factor, j: int) -> str:
    return f"{f.key}[{j + 1}]" if isinstance(f.node, g.Call) and f.node.func == "poly" else f.key


# ------------------------------------------------------------------------------ evaluation
def _column_values(frame: pd.DataFrame, name: str) -> np.ndarray:
    a = column_array(frame, name)
    if isinstance(a, np.ndarray) and a.dtype.kind in "iubf":
        return a.astype(float)  # a copy (numbers and booleans are never categorical)
    s = frame[name]
    if _is_categorical(s):
        raise ValueError(f"Column {name!r} is categorical (values such as "
                         f"{list(pd.unique(s.dropna())[:3])}); it cannot be used in arithmetic.")
    if isinstance(s.dtype, np.dtype) and s.dtype.kind in "iubf":
        return s.to_numpy().astype(float)  # a copy, as below, at a tenth of the cost
    return s.to_numpy(dtype=float, na_value=np.nan)


def _numeric(node: object, frame: pd.DataFrame, factors: dict[str, Factor]) -> np.ndarray:
    """Evaluate a numeric expression node on *frame* with NumPy functions from a fixed table."""
    if isinstance(node, g.Name):
        return _column_values(frame, node.name)
    if isinstance(node, g.Num):
        return np.full(len(frame), node.value)
    if isinstance(node, g.Paren):
        return _numeric(node.inner, frame, factors)
    if isinstance(node, g.Neg):
        return -_numeric(node.operand, frame, factors)
    with np.errstate(all="ignore"):
        if isinstance(node, g.BinOp) and node.op in _ARITH:
            return _ARITH[node.op](_numeric(node.left, frame, factors),
                                   _numeric(node.right, frame, factors))
        if isinstance(node, g.Call):
            if node.func in _MATH:
                return _MATH[node.func](_numeric(node.args[0], frame, factors))
            if node.func == "I":
                return _numeric(node.args[0], frame, factors)
            key = g.render_expr(node)
            if key in factors and factors[key].kind == "numeric":
                return _factor_values(factors[key], frame, factors)[:, 0]
    raise ValueError(f"'{g.render_expr(node)}' cannot be used as a number here.")


def _factor_values(f: Factor, frame: pd.DataFrame, factors: dict[str, Factor]) -> np.ndarray:
    """(n, width) values of a numeric factor."""
    node = f.node
    if isinstance(node, g.Call) and node.func in ("scale", "center", "poly"):
        x = _numeric(node.args[0], frame, factors)
        if node.func == "poly":
            return poly_matrix(x, *f.params)
        mean, sd = f.params
        return ((x - mean) / sd)[:, None]
    return _numeric(node, frame, factors)[:, None]


def _codes(f: Factor, frame: pd.DataFrame) -> np.ndarray:
    """Level index of each row (-1 for a value that is not a level)."""
    a = column_array(frame, f.variable)
    if isinstance(a.dtype, pd.CategoricalDtype):
        cats = a.categories
        raw = np.asarray(a.codes)
        if len(cats) == len(f.levels):
            tc = frame.categories(f.variable) if isinstance(frame, ColumnCache) else \
                tuple(cats.tolist())
            if tc == f.levels and all(type(x) is type(y) for x, y in zip(tc, f.levels)):
                return raw.astype(np.int64)  # the fitted levels, in order (the common case)
    s = frame[f.variable]
    levels = pd.Index(list(f.levels))
    if isinstance(s.dtype, pd.CategoricalDtype):
        if cats.equals(levels):
            return raw.astype(np.int64)
        pos = levels.get_indexer(cats)
        if (pos < 0).any():
            pos = np.where(pos >= 0, pos, pd.Index([str(v) for v in levels]).get_indexer(
                cats.astype(str)))
        return np.where(raw >= 0, pos[np.maximum(raw, 0)], -1).astype(np.int64)
    if pd.api.types.is_bool_dtype(s):
        values = s.astype(int).to_numpy()
    else:
        values = s.to_numpy()
    codes, uniq = pd.factorize(values)
    pos = levels.get_indexer(uniq)
    if (pos < 0).any():
        pos = np.where(pos >= 0, pos, pd.Index([str(v) for v in levels]).get_indexer(
            pd.Index(uniq).astype(str)))
    return np.where(codes >= 0, pos[np.maximum(codes, 0)], -1).astype(np.int64)


def _matrix(design: Design, cols, frame: pd.DataFrame, order: str = "F") -> np.ndarray:
    n = len(frame)
    cache: dict[str, np.ndarray] = {}

    def get(key: str) -> np.ndarray:
        if key not in cache:
            f = design.factors[key]
            if f.kind == "categorical":
                codes = _codes(f, frame)
                bad = codes < 0
                if bad.any():
                    s = frame[f.variable]
                    vals = sorted({str(v) for v in pd.Series(s)[bad].dropna().unique()})
                    if vals:
                        raise ValueError(f"Column {f.variable!r} has level(s) {vals} that the "
                                         f"model was not fitted on (known: {list(f.levels)}).")
                cache[key] = codes
            else:
                vals = _factor_values(f, frame, design.factors)
                if not np.isfinite(vals).all():
                    rows = np.flatnonzero(~np.isfinite(vals).all(axis=1))
                    raise ValueError(f"The model column {key!r} is not finite (NaN or infinite) "
                                     f"on {rows.size} row(s), first at row "
                                     f"{frame.index[rows[0]]!r}; check the transformation (for "
                                     f"example log of 0 or of a negative value).")
                cache[key] = vals
        return cache[key]

    # Each column written in place (column-major X; row-major for the narrow Z of an engine):
    # a product of parts p0 p1 p2 ... as ((p0 p1) p2) ..., an indicator written as 1.0 / 0.0.
    X = np.empty((n, len(cols)), order=order)
    masks = [np.empty(n, dtype=bool), np.empty(n, dtype=bool)]
    factors = design.factors
    for j, col in enumerate(cols):
        out = X[:, j]
        parts = col.parts
        if not parts:
            out.fill(1.0)
            continue
        if len(parts) == 1:
            key, idx = parts[0]
            if factors[key].kind == "categorical":
                np.equal(get(key), idx, out=out)
            else:
                out[:] = get(key)[:, idx]
            continue
        vals = []
        for i, (key, idx) in enumerate(parts[:2]):
            arr = get(key)
            vals.append(np.equal(arr, idx, out=masks[i]) if factors[key].kind == "categorical"
                        else arr[:, idx])
        np.multiply(vals[0], vals[1], out=out)
        for key, idx in parts[2:]:
            arr = get(key)
            out *= np.equal(arr, idx, out=masks[0]) if factors[key].kind == "categorical" \
                else arr[:, idx]
    return X


# -------------------------------------------------------------------------------------- SQL
def _sql_number(x: float) -> str:
    return repr(float(x))


def _sql_numeric(node: object, quote) -> str:
    if isinstance(node, g.Name):
        return f"CAST({quote(node.name)} AS DOUBLE)"
    if isinstance(node, g.Num):
        return _sql_number(node.value)
    if isinstance(node, g.Paren):
        return _sql_numeric(node.inner, quote)
    if isinstance(node, g.Neg):
        return f"(-{_sql_numeric(node.operand, quote)})"
    if isinstance(node, g.BinOp):
        a, b = _sql_numeric(node.left, quote), _sql_numeric(node.right, quote)
        return f"POWER({a}, {b})" if node.op == "**" else f"({a} {node.op} {b})"
    if isinstance(node, g.Call) and node.func in _SQL_MATH:
        return _SQL_MATH[node.func].format(_sql_numeric(node.args[0], quote))
    if isinstance(node, g.Call) and node.func == "I":
        return _sql_numeric(node.args[0], quote)
    raise ValueError(f"'{g.render_expr(node)}' cannot be written in SQL; build this model's "
                     f"matrix in Python instead.")


def _sql_part(f: Factor, j: int, quote) -> str:
    if f.kind == "categorical":
        lev = f.levels[j]
        lit = _sql_number(lev) if isinstance(lev, (int, float, np.number)) and \
            not isinstance(lev, bool) else "'" + str(lev).replace("'", "''") + "'"
        return f"(CASE WHEN {quote(f.variable)} = {lit} THEN 1.0 ELSE 0.0 END)"
    node = f.node
    if isinstance(node, g.Call) and node.func in ("scale", "center"):
        mean, sd = f.params
        return f"(({_sql_numeric(node.args[0], quote)} - {_sql_number(mean)}) / " \
               f"{_sql_number(sd)})"
    if isinstance(node, g.Call) and node.func == "poly":
        raise ValueError(f"{f.key} (orthogonal polynomials) cannot be written in SQL; build this "
                         f"model's matrix in Python instead.")
    return _sql_numeric(node, quote)


# ------------------------------------------------------------------------------------ poly
def poly_coefs(x: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """R's ``poly(x, degree)`` coefficients (``alpha``, ``norm2``) by the three-term recurrence.

    Raises ValueError when *x* has no more than *degree* distinct values (as R does).
    """
    x = np.asarray(x, dtype=float)
    if np.unique(x).size <= degree:
        raise ValueError(f"poly(): the degree ({degree}) must be less than the number of distinct "
                         f"values ({np.unique(x).size}).")
    alpha = np.empty(degree)
    norm2 = np.empty(degree + 2)
    norm2[0] = 1.0
    p_prev, p = np.zeros_like(x), np.ones_like(x)
    for k in range(degree + 1):
        norm2[k + 1] = float(p @ p)
        if k == degree:
            break
        alpha[k] = float((x * p) @ p) / norm2[k + 1]
        p_prev, p = p, (x - alpha[k]) * p - (norm2[k + 1] / norm2[k]) * p_prev
    return alpha, norm2


def poly_matrix(x: np.ndarray, alpha: np.ndarray, norm2: np.ndarray) -> np.ndarray:
    """R's ``predict(poly(...), x)``: the orthogonal polynomial columns 1..degree at *x*."""
    x = np.asarray(x, dtype=float)
    degree = alpha.size
    Z = np.ones((x.size, degree + 1))
    Z[:, 1] = x - alpha[0]
    for i in range(1, degree):
        Z[:, i + 1] = (x - alpha[i]) * Z[:, i] - (norm2[i + 1] / norm2[i]) * Z[:, i - 1]
    return Z[:, 1:] / np.sqrt(norm2[2:])
