"""The package's own grammar of lme4 model formulas: text to a typed tree, never to Python.

A formula is tokenised and parsed by recursive descent into frozen dataclasses (:class:`Name`,
:class:`Num`, :class:`Call`, :class:`BinOp`, :class:`Neg`, :class:`Paren`, :class:`Bar`). Only
column names, numbers, the formula operators ``~ + - * / : ^ ( ) | ||`` and a fixed allow-list of
functions are accepted; anything else is refused with a sentence naming the token and its position.
Nothing here (nor in :mod:`mfr_outcomes.models.design`, which evaluates the tree with NumPy functions
looked up in a fixed table) calls ``eval``, ``exec`` or ``compile`` on the user's text.

:func:`parse` gives a :class:`FormulaTree`; :func:`expand_terms` applies the formula algebra
(``a*b = a + b + a:b``, ``a/b = a + a:b``, ``(a+b)^2``, ``- 1``, ``0 +``) to give the terms, each an
ordered tuple of factors, as R's ``terms()`` and formulaic do.
"""
from __future__ import annotations

import keyword
from dataclasses import dataclass

__all__ = [
    "ALLOWED_FUNCTIONS", "MATH_FUNCTIONS", "Token", "Name", "Num", "Str", "Call", "BinOp", "Neg",
    "Paren", "Bar", "Node", "FormulaTree", "Term", "tokenize", "parse", "render", "render_expr",
    "expand_terms", "split_random", "variables",
]

#: functions of one numeric argument, usable anywhere a number is (also inside I() and log()).
MATH_FUNCTIONS = ("log", "log10", "log2", "log1p", "exp", "sqrt", "abs")
#: every function a formula may call (cbind only as the response; Treatment only inside C()).
ALLOWED_FUNCTIONS = ("C", "factor", "I", *MATH_FUNCTIONS, "poly", "scale", "center", "offset",
                     "cbind")
_ALLOWED_TEXT = ("only column names, numbers, + - * / : ^ ( ) | and the functions "
                 + ", ".join(ALLOWED_FUNCTIONS[:-1]) + " and cbind (as the response) are allowed")
_OPERATORS = ("||", "**", "~", "+", "-", "*", "/", ":", "^", "|", "(", ")", ",", "=")


@dataclass(frozen=True)
class Token:
    kind: str  # "name", "qname" (backquoted), "number", "string", "op", "end"
    text: str
    pos: int  # 1-based character position in the formula


def _refuse(text: str, pos: int, why: str = "") -> ValueError:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return ValueError(f"The formula cannot use {shown!r} (position {pos}): {why or _ALLOWED_TEXT}.")


def _foreign(ch: str) -> str:
    """Why a character outside the grammar is refused; a non-ASCII one is named, since it may
    look like an allowed one (a Greek ο for o, a full-width ＋, a zero-width space)."""
    if ch.isascii():
        return ""
    import unicodedata

    name = unicodedata.name(ch, "an unnamed character")
    return (f"the character U+{ord(ch):04X} ({name}) is not ASCII; it may look like an allowed "
            f"one: retype it. {_ALLOWED_TEXT[0].upper()}{_ALLOWED_TEXT[1:]}")


def tokenize(formula: str) -> list[Token]:
    """Split *formula* into tokens; refuse any character or word outside the grammar."""
    out: list[Token] = []
    i, n = 0, len(formula)
    while i < n:
        ch = formula[i]
        if ch in " \t\r\n":
            i += 1
            continue
        start = i
        if ch.isascii() and (ch.isalpha() or ch == "_"):
            while i < n and formula[i].isascii() and (formula[i].isalnum() or formula[i] in "_."):
                i += 1
            word = formula[start:i]
            if "." in word or "__" in word or keyword.iskeyword(word):
                raise _refuse(word, start + 1, _ALLOWED_TEXT + " (a column whose name has dots or "
                              "other characters goes in backquotes, as `my.column`)")
            out.append(Token("name", word, start + 1))
        elif ch.isdigit() or (ch == "." and i + 1 < n and formula[i + 1].isdigit()):
            while i < n and (formula[i].isdigit() or formula[i] == "."):
                i += 1
            if i < n and formula[i] in "eE":
                j = i + 1
                if j < n and formula[j] in "+-":
                    j += 1
                if j < n and formula[j].isdigit():
                    i = j
                    while i < n and formula[i].isdigit():
                        i += 1
            text = formula[start:i]
            if text.count(".") > 1 or (i < n and (formula[i].isalpha() or formula[i] == "_")):
                raise _refuse(formula[start:i + 1], start + 1, "a number must be digits, as 2 "
                              "or 0.5")
            out.append(Token("number", text, start + 1))
        elif ch == "`":
            end = formula.find("`", i + 1)
            if end < 0 or end == i + 1:
                raise _refuse(formula[i:], start + 1, "a backquoted column name needs a closing "
                              "backquote")
            out.append(Token("qname", formula[i + 1:end], start + 1))
            i = end + 1
        elif ch in "'\"":
            end = formula.find(ch, i + 1)
            if end < 0 or "\\" in formula[i:end]:
                raise _refuse(formula[i:], start + 1, "a quoted level needs a closing quote and "
                              "no backslash")
            out.append(Token("string", formula[i + 1:end], start + 1))
            i = end + 1
        else:
            for op in _OPERATORS:
                if formula.startswith(op, i):
                    out.append(Token("op", op, start + 1))
                    i += len(op)
                    break
            else:
                j = i + 1
                while j < n and formula[j] not in " \t\r\n()+~,":
                    j += 1
                raise _refuse(formula[i:j], start + 1, _foreign(ch))
    out.append(Token("end", "", n + 1))
    return out


# ---------------------------------------------------------------------------------------- nodes
@dataclass(frozen=True)
class Name:
    name: str
    quoted: bool = False


@dataclass(frozen=True)
class Num:
    text: str

    @property
    def value(self) -> float:
        return float(self.text)


@dataclass(frozen=True)
class Str:
    value: str


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple
    kwargs: tuple = ()  # ((key, node), ...)


@dataclass(frozen=True)
class BinOp:
    op: str  # formula: + - * / : ^ ; arithmetic (inside functions): + - * / **
    left: object
    right: object


@dataclass(frozen=True)
class Neg:
    operand: object


@dataclass(frozen=True)
class Paren:
    inner: object


@dataclass(frozen=True)
class Bar:
    expr: object
    group: object
    double: bool  # True for ||


Node = Name | Num | Str | Call | BinOp | Neg | Paren | Bar


@dataclass(frozen=True)
class FormulaTree:
    """A parsed formula: the response node and the right-hand side node."""

    text: str
    response: object
    rhs: object


# --------------------------------------------------------------------------------------- parser
class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def take(self) -> Token:
        t = self.toks[self.i]
        self.i += 1
        return t

    def at(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def expect(self, op: str, context: str) -> None:
        if not self.at(op):
            t = self.tok
            if t.kind == "end":
                raise ValueError(f"The formula {self.text!r} ends where {op!r} was expected "
                                 f"({context}); check for an unmatched '('.")
            raise _refuse(t.text, t.pos, f"{op!r} was expected here ({context})")
        self.take()

    def unexpected(self, what: str) -> ValueError:
        t = self.tok
        if t.kind == "end":
            return ValueError(f"The formula {self.text!r} ends where {what} was expected.")
        if t.kind == "op" and t.text == ")":
            return _refuse(")", t.pos, "it has an unmatched ')'")
        if t.kind == "string":
            q = self.text[t.pos - 1]
            return _refuse(q + t.text + q, t.pos, "quoted text is allowed only as a level in "
                           "C(x, Treatment('level'))")
        return _refuse(t.text, t.pos, f"{what} was expected here")

    # formula level --------------------------------------------------------------------------
    def formula(self) -> FormulaTree:
        if not any(t.kind == "op" and t.text == "~" for t in self.toks):
            raise ValueError(f"A model formula needs a response and '~', as in 'value ~ post + "
                             f"(1 | patient_id)'; got {self.text!r}.")
        if self.at("~"):
            raise ValueError(f"The formula {self.text!r} has no response to the left of '~'.")
        t = self.tok
        if t.kind == "name" and t.text == "cbind" and self.toks[self.i + 1].text == "(":
            response: object = self.call()
        else:
            response = self.arith()
        if not self.at("~"):
            raise self.unexpected("'~' after the response")
        self.take()
        rhs = self.bar_expr(top=True)
        if self.tok.kind != "end":
            t = self.tok
            if t.kind == "op" and t.text == "~":
                raise ValueError(f"The formula {self.text!r} has more than one '~'.")
            raise self.unexpected("'+' or the end of the formula")
        return FormulaTree(self.text, response, rhs)

    def bar_expr(self, top: bool = False) -> object:
        left = self.sum()
        if self.at("|", "||"):
            t = self.take()
            if top:
                raise ValueError(f"The formula {self.text!r} has '|' outside parentheses "
                                 f"(position {t.pos}); write random terms as '(terms | group)'.")
            if self.tok.kind == "end" or self.at(")"):
                raise ValueError(f"The random term at position {t.pos} of {self.text!r} needs a "
                                 f"grouping factor after {t.text!r}.")
            right = self.sum()
            return Bar(left, right, t.text == "||")
        return left

    def sum(self) -> object:
        if self.at("-", "+"):
            op = self.take().text
            first = self.product()
            node = Neg(first) if op == "-" else first
        elif self.at("|", "||"):
            t = self.tok
            raise ValueError(f"The random term at position {t.pos} of {self.text!r} needs terms "
                             f"before {t.text!r}, as '(1 | group)'.")
        else:
            node = self.product()
        while self.at("+", "-"):
            op = self.take().text
            node = BinOp(op, node, self.product())
        return node

    def product(self) -> object:
        node = self.interaction()
        while self.at("*", "/"):
            op = self.take().text
            node = BinOp(op, node, self.interaction())
        return node

    def interaction(self) -> object:
        node = self.power()
        while self.at(":"):
            self.take()
            node = BinOp(":", node, self.power())
        return node

    def power(self) -> object:
        node = self.atom()
        if self.at("^", "**"):
            self.take()
            t = self.tok
            if t.kind != "number" or not t.text.isdigit() or int(t.text) < 1:
                raise _refuse(t.text, t.pos, "the power of a formula term, as in (a + b)^2, must "
                              "be a whole number")
            self.take()
            node = BinOp("^", node, Num(t.text))
        return node

    def atom(self) -> object:
        t = self.tok
        if t.kind in ("name", "qname"):
            if t.kind == "name" and self.toks[self.i + 1].kind == "op" and \
                    self.toks[self.i + 1].text == "(":
                return self.call()
            self.take()
            return Name(t.text, t.kind == "qname")
        if t.kind == "number":
            self.take()
            return Num(t.text)
        if self.at("("):
            self.take()
            inner = self.bar_expr()
            self.expect(")", "to close the '('")
            return Paren(inner)
        raise self.unexpected("a column name, a number or '('")

    # calls and arithmetic -------------------------------------------------------------------
    def call(self) -> Call:
        t = self.take()
        func = t.text
        if func not in ALLOWED_FUNCTIONS:
            raise _refuse(func, t.pos)
        self.take()  # "("
        if func in ("C", "factor"):
            var = self.arith()
            if not isinstance(var, Name):
                raise _refuse(render_expr(var), t.pos, f"{func}() takes a column name, as "
                              f"{func}(week)")
            args: list = [var]
            kwargs: list = []
            if func == "C" and self.at(","):
                self.take()
                args.append(self.treatment())
            self.expect(")", f"to close {func}(")
            return Call(func, tuple(args), tuple(kwargs))
        if func == "poly":
            x = self.arith()
            self.expect(",", "poly(x, degree) needs a degree")
            if self.tok.kind == "name" and self.tok.text == "degree" and \
                    self.toks[self.i + 1].text == "=":
                self.take()
                self.take()
                key = "degree"
            else:
                key = ""
            d = self.tok
            if d.kind != "number" or not d.text.isdigit() or int(d.text) < 1:
                raise _refuse(d.text, d.pos, "the degree of poly() must be a whole number ≥ 1")
            self.take()
            self.expect(")", "to close poly(")
            if key:
                return Call(func, (x,), (("degree", Num(d.text)),))
            return Call(func, (x, Num(d.text)))
        args = [self.arith()]
        if func == "cbind":
            self.expect(",", "cbind(successes, failures) needs two columns")
            args.append(self.arith())
        self.expect(")", f"to close {func}(")
        return Call(func, tuple(args))

    def treatment(self) -> Call:
        t = self.tok
        if not (t.kind == "name" and t.text == "Treatment"):
            raise _refuse(t.text, t.pos, "the second argument of C() can only be "
                          "Treatment('level') or Treatment(reference='level')")
        self.take()
        self.expect("(", "Treatment(")
        key = ""
        if self.tok.kind == "name" and self.tok.text == "reference":
            self.take()
            self.expect("=", "Treatment(reference='level')")
            key = "reference"
        v = self.tok
        if v.kind not in ("string", "number"):
            raise _refuse(v.text, v.pos, "the reference level must be quoted text or a number")
        self.take()
        self.expect(")", "to close Treatment(")
        value = Str(v.text) if v.kind == "string" else Num(v.text)
        return Call("Treatment", () if key else (value,), ((key, value),) if key else ())

    def arith(self) -> object:
        node = self.term()
        while self.at("+", "-"):
            op = self.take().text
            node = BinOp(op, node, self.term())
        return node

    def term(self) -> object:
        node = self.factor()
        while self.at("*", "/"):
            op = self.take().text
            node = BinOp(op, node, self.factor())
        return node

    def factor(self) -> object:
        if self.at("-"):
            self.take()
            return Neg(self.factor())
        if self.at("+"):
            self.take()
            return self.factor()
        base = self.primary()
        if self.at("**", "^"):
            self.take()
            return BinOp("**", base, self.factor())
        return base

    def primary(self) -> object:
        t = self.tok
        if t.kind == "name" and self.toks[self.i + 1].kind == "op" and \
                self.toks[self.i + 1].text == "(":
            if t.text not in MATH_FUNCTIONS:
                raise _refuse(t.text, t.pos, "inside a function only column names, numbers, "
                              "+ - * / ** and the functions " + ", ".join(MATH_FUNCTIONS)
                              + " are allowed")
            self.take()
            self.take()
            arg = self.arith()
            self.expect(")", f"to close {t.text}(")
            return Call(t.text, (arg,))
        if t.kind in ("name", "qname"):
            self.take()
            return Name(t.text, t.kind == "qname")
        if t.kind == "number":
            self.take()
            return Num(t.text)
        if self.at("("):
            self.take()
            inner = self.arith()
            self.expect(")", "to close the '('")
            return Paren(inner)
        raise self.unexpected("a column name or a number")


def parse(formula: str) -> FormulaTree:
    """Parse an lme4 formula into a :class:`FormulaTree` (nothing is evaluated).

    Raises
    ------
    ValueError
        A sentence naming the first token outside the grammar and its position.

    Examples
    --------
    >>> parse("y ~ x + (1 | g)").rhs
    BinOp(op='+', left=Name(name='x', quoted=False), right=Paren(inner=Bar(expr=Num(text='1'), \
group=Name(name='g', quoted=False), double=False)))
    """
    if not isinstance(formula, str):
        raise ValueError(f"A model formula must be text, got {type(formula).__name__}.")
    return _Parser(formula).formula()


# -------------------------------------------------------------------------------------- render
# Python's ast.unparse precedences, so that names match formulaic's (which unparses the factor).
_ARITH, _TERM, _FACTOR, _POWER, _ATOM = 1, 2, 3, 4, 5
_PREC = {"+": _ARITH, "-": _ARITH, "*": _TERM, "/": _TERM, "**": _POWER}


def _num_text(text: str) -> str:
    if any(c in text for c in ".eE"):
        return repr(float(text))
    return str(int(text))


def render_expr(node: object, ctx: int = 0) -> str:
    """A factor expression as formulaic names it (Python's ``ast.unparse`` spacing and brackets)."""
    if isinstance(node, Name):
        return f"`{node.name}`" if node.quoted else node.name
    if isinstance(node, Num):
        return _num_text(node.text)
    if isinstance(node, Str):
        return repr(node.value)
    if isinstance(node, Paren):
        return render_expr(node.inner, ctx)
    if isinstance(node, Neg):
        s = "-" + render_expr(node.operand, _FACTOR)
        return f"({s})" if ctx > _FACTOR else s
    if isinstance(node, BinOp):
        p = _PREC[node.op]
        lp, rp = (p + 1, p) if node.op == "**" else (p, p + 1)
        s = f"{render_expr(node.left, lp)} {node.op} {render_expr(node.right, rp)}"
        return f"({s})" if ctx > p else s
    if isinstance(node, Call):
        args = [render_expr(a) for a in node.args]
        args += [f"{k}={render_expr(v)}" for k, v in node.kwargs]
        return f"{node.func}({', '.join(args)})"
    raise TypeError(f"not an expression node: {node!r}")


def render(node: object) -> str:
    """A formula-level node as text (``post * technique + session_number``)."""
    if isinstance(node, (Name, Num, Call)):
        return render_expr(node)
    if isinstance(node, Paren):
        return f"({render(node.inner)})"
    if isinstance(node, Neg):
        return f"-{render(node.operand)}"
    if isinstance(node, Bar):
        return f"{render(node.expr)} {'||' if node.double else '|'} {render(node.group)}"
    if isinstance(node, BinOp):
        if node.op in (":", "^"):
            return f"{render(node.left)}{node.op}{render(node.right)}"
        return f"{render(node.left)} {node.op} {render(node.right)}"
    raise TypeError(f"not a formula node: {node!r}")


# ------------------------------------------------------------------------------ formula algebra
#: a term: the ordered tuple of its factor nodes; () is the intercept.
Term = tuple


def _signed_items(node: object) -> list[tuple[str, object]]:
    """The top-level ``+``/``-`` items of a sum, with their signs, in order."""
    if isinstance(node, BinOp) and node.op in ("+", "-"):
        items = _signed_items(node.left)
        items.append((node.op, node.right))
        return items
    if isinstance(node, Neg):
        return [("-", node.operand)]
    return [("+", node)]


def split_random(rhs: object) -> tuple[list[tuple[str, object]], list[Bar]]:
    """Separate the random terms ``(expr | group)`` (also inside a parenthesised sum, as lme4's
    ``findbars``) from the signed fixed items of the right-hand side."""
    fixed: list[tuple[str, object]] = []
    bars: list[Bar] = []
    for sign, item in _signed_items(rhs):
        inner = item.inner if isinstance(item, Paren) else None
        if isinstance(inner, Bar):
            if sign == "-":
                raise ValueError("A random term cannot be subtracted from a formula.")
            bars.append(inner)
        elif inner is not None and _contains_bar(inner):
            sub_fixed, sub_bars = split_random(inner)
            if sign == "-" or sub_fixed:
                raise ValueError(f"The parenthesised part '({render(inner)})' mixes random terms "
                                 f"with other terms; write each random term as '(terms | group)'.")
            bars += sub_bars
        elif _contains_bar(item):
            raise ValueError(f"The term '{render(item)}' uses a random term inside an "
                             f"interaction; write random terms as '(terms | group)' joined by +.")
        else:
            fixed.append((sign, item))
    return fixed, bars


def _contains_bar(node: object) -> bool:
    if isinstance(node, Bar):
        return True
    if isinstance(node, Paren):
        return _contains_bar(node.inner)
    if isinstance(node, BinOp):
        return _contains_bar(node.left) or _contains_bar(node.right)
    if isinstance(node, Neg):
        return _contains_bar(node.operand)
    return False


def _merge(a: Term, b: Term) -> Term:
    out = list(a)
    for f in b:
        if f not in out:
            out.append(f)
    return tuple(out)


def _add(terms: list[Term], new: list[Term]) -> list[Term]:
    out = list(terms)
    keys = {frozenset(t) for t in out}
    for t in new:
        if frozenset(t) not in keys:
            out.append(t)
            keys.add(frozenset(t))
    return out


def _expand(node: object, text: str) -> list[Term]:
    if isinstance(node, (Name, Call)):
        if isinstance(node, Call) and node.func == "cbind":
            raise ValueError("cbind() can only be the response, as in 'cbind(successes, "
                             "failures) ~ ...'.")
        return [(node,)]
    if isinstance(node, Num):
        if node.text in ("0", "1"):
            return [()] if node.text == "1" else []
        raise ValueError(f"The number {node.text} cannot be a term of the formula {text!r}; only "
                         f"1 (intercept) and 0 (no intercept) can, or wrap arithmetic in I().")
    if isinstance(node, Paren):
        return _expand(node.inner, text)
    if isinstance(node, Neg) or (isinstance(node, BinOp) and node.op in "+-"):
        return _expand_sum(node, text)
    if isinstance(node, BinOp):
        left = _expand(node.left, text)
        if node.op == "^":
            n = int(node.right.text)
            out = left
            for _ in range(n - 1):
                out = _add(out, [_merge(a, b) for a in out for b in left])
            return out
        right = _expand(node.right, text)
        inter = [_merge(a, b) for a in left for b in right]
        if node.op == ":":
            return _add([], inter)
        if node.op == "*":
            return _add(_add(left, right), inter)
        if node.op == "/":
            whole: Term = ()
            for t in left:
                whole = _merge(whole, t)
            return _add(left, [_merge(whole, b) for b in right])
    if isinstance(node, Bar):
        raise ValueError(f"The random term '({render(node)})' must be joined to the formula by +.")
    raise ValueError(f"The formula {text!r} has a part that is not a term: {render(node)!r}.")


def _apply(terms: list[Term], sign: str, item: object, text: str) -> list[Term]:
    """Add (``+``) or remove (``-``) the terms of *item*; ``0`` and ``1`` set the intercept."""
    if isinstance(item, Num) and item.text == "0":
        return [t for t in terms if t] if sign == "+" else _add([()], terms)
    new = _expand(item, text)
    if sign == "+":
        return _add(terms, new)
    drop = {frozenset(t) for t in new}
    return [t for t in terms if frozenset(t) not in drop]


def _expand_sum(node: object, text: str) -> list[Term]:
    terms: list[Term] = []
    for sign, item in _signed_items(node):
        terms = _apply(terms, sign, item, text)
    return terms


def expand_terms(items: list[tuple[str, object]], text: str = "") -> list[Term]:
    """The terms of a signed sum (implicit intercept first), ordered by degree as formulaic does.

    Examples
    --------
    >>> t = expand_terms(split_random(parse("y ~ a * b - 1").rhs)[0])
    >>> [[f.name for f in term] for term in t]
    [['a'], ['b'], ['a', 'b']]
    """
    terms: list[Term] = [()]
    for sign, item in items:
        terms = _apply(terms, sign, item, text)
    return sorted(terms, key=len)  # stable: by degree, then as written


def variables(node: object) -> list[str]:
    """Column names a node reads, in order of first appearance."""
    out: list[str] = []

    def walk(n: object) -> None:
        if isinstance(n, Name):
            if n.name not in out:
                out.append(n.name)
        elif isinstance(n, Call):
            if n.func == "Treatment":
                return
            for a in n.args:
                walk(a)
        elif isinstance(n, BinOp):
            walk(n.left)
            if not (n.op == "^" and isinstance(n.right, Num)):
                walk(n.right)
        elif isinstance(n, (Neg, Paren)):
            walk(n.operand if isinstance(n, Neg) else n.inner)
        elif isinstance(n, Bar):
            walk(n.expr)
            walk(n.group)

    walk(node)
    return out
