"""The formula grammar (mfr_outcomes.models.grammar): parsed, never evaluated as Python."""
from __future__ import annotations

import re
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfr_outcomes.models import grammar as g
from mfr_outcomes.models.fit import fit_mixed
from mfr_outcomes.models.formula import build_spec, parse_formula


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 48
    return pd.DataFrame({"value": rng.normal(size=n), "post": np.tile([0, 1], n // 2),
                         "x": rng.uniform(1, 3, n), "patient_id": np.repeat(np.arange(8), 6),
                         "technique": rng.choice(["massage", "stretching"], n)})


def _exploits(canary: Path) -> list[tuple[str, str]]:
    """(formula, the token the refusal must name)."""
    c = str(canary)
    return [
        (f"value ~ post + I(0*value.__init__.__globals__['__builtins__']['__import__']('os')"
         f".system('touch {c}')) + (1|patient_id)", "value.__init__.__globals__"),
        (f"value ~ __import__('os').system('touch {c}') + (1 | patient_id)", "__import__"),
        ("value ~ value.__class__ + (1 | patient_id)", "value.__class__"),
        ("value ~ post + (lambda: 1)() + (1 | patient_id)", "lambda"),
        ("value ~ f'{post}' + (1 | patient_id)", "'{post}'"),
        (f"value ~ eval(\"__import__('os').system('touch {c}')\") + (1 | patient_id)", "eval"),
        (f"value ~ C(post, __import__('os').system('touch {c}')) + (1 | patient_id)",
         "__import__"),
        ("value ~ exec('x') + (1 | patient_id)", "exec"),
        ("value ~ post[0] + (1 | patient_id)", "[0]"),
        ("value ~ post @ post + (1 | patient_id)", "@"),
        ("value ~ I(post > 0) + (1 | patient_id)", ">"),
        ("value ~ np.log(x) + (1 | patient_id)", "np.log"),
        ("value ~ getattr(post, 'real') + (1 | patient_id)", "getattr"),
        ("value ~ I(open('/etc/passwd')) + (1 | patient_id)", "open"),
        ("value ~ C(technique, Sum) + (1 | patient_id)", "Sum"),
        ("value ~ post + (1 | patient_id) ; import os", ";"),
        ("value ~ post if True else x + (1 | patient_id)", "if"),
        ("value ~ {post} + (1 | patient_id)", "{post}"),
        ("value ~ post + (1 | patient_id.__class__)", "patient_id.__class__"),
        ("__import__('os') ~ post + (1 | patient_id)", "__import__"),
    ]


def test_known_exploits_are_refused_by_name(frame: pd.DataFrame, tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    for formula, token in _exploits(canary):
        with pytest.raises(ValueError) as info:
            fit_mixed(frame, formula)
        msg = str(info.value)
        assert token in msg, (formula, msg)
        assert "position" in msg, msg
        assert not canary.exists()


def test_refusal_sentence_names_token_and_position() -> None:
    with pytest.raises(ValueError) as info:
        parse_formula("value ~ post + I(0*value.__init__) + (1 | patient_id)")
    assert str(info.value).startswith("The formula cannot use 'value.__init__' (position 20): only "
                                      "column names, numbers, + - * / : ^ ( ) | and the functions "
                                      "C, factor, I, log,")


# Fragments a fuzzer mixes: allowed pieces and hostile ones.
_ALLOWED = ["value", "post", "x", "technique", "patient_id", "1", "0", "2", "+", "-", "*", "/",
            ":", "^", "(", ")", "|", "||", "~", "log(", "I(", "C(", "factor(", "poly(", "scale(",
            "exp(", "sqrt(", ",", "**", "`x`", "offset(", "cbind("]
_HOSTILE = ["__import__", ".", "__class__", "'os'", "[", "]", "@", "lambda", "eval(", "exec(",
            "open(", "os", "system(", "f'", "{", "}", "!", "<", ">", "=", "==", ";", "\\", "#",
            "\"", "$", "%", "&", "import", "globals()", "__builtins__", "__init__", "getattr("]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(st.lists(st.sampled_from(_ALLOWED + _HOSTILE), min_size=1, max_size=14),
       st.lists(st.sampled_from(_ALLOWED), max_size=3))
def test_fuzzed_formulas_never_run_code_and_fail_as_sentences(pieces, prefix) -> None:
    canary = Path(__file__).with_name("CANARY_grammar_fuzz")
    text = " ".join(prefix + ["value ~"] + pieces + [f"+ I(0*__import__('os').system('touch "
                                                      f"{canary}'))"] * (len(pieces) % 2))
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"value": rng.normal(size=12), "post": np.tile([0, 1], 6),
                          "x": rng.uniform(1, 2, 12), "technique": ["a", "b", "c"] * 4,
                          "patient_id": np.repeat(np.arange(4), 3)})
    try:
        spec = build_spec(frame, text)
    except ValueError as exc:
        msg = str(exc)
        assert msg and msg[0].isupper() and msg.rstrip().endswith("."), msg
        named = re.search(r"cannot use (['\"])(.*?)\1 \(position (\d+)\)", msg)
        if named and not named.group(2).endswith("..."):
            # the sentence names the very token found at that position of the text
            token = named.group(2).encode().decode("unicode_escape")  # repr's escapes
            assert text[int(named.group(3)) - 1:].startswith(token), (text, msg)
        if any(h in text for h in ("__", "lambda", "eval(", "exec(", "open(", "system(")):
            assert named or "ends where" in msg or "more than one" in msg or "needs" in msg, msg
    else:
        assert np.isfinite(spec.X).all()
        assert "__" not in text
    assert not canary.exists()


@given(st.text(alphabet=string.printable, max_size=40))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_any_text_is_parsed_or_refused_with_a_value_error(text: str) -> None:
    try:
        g.parse(text)
    except ValueError as exc:
        assert str(exc)


@pytest.mark.parametrize("formula, fixed, terms", [
    ("y ~ a * b", "a * b", ["1", "a", "b", "a:b"]),
    ("y ~ a / b", "a / b", ["1", "a", "a:b"]),
    ("y ~ (a + b + c)^2 - a:b", "(a + b + c)^2 - a:b", ["1", "a", "b", "c", "a:c", "b:c"]),
    ("y ~ 0 + a", "0 + a", ["a"]),
    ("y ~ -1 + a", "-1 + a", ["a"]),
    ("y ~ a - 1", "a - 1", ["a"]),
    ("y ~ a:b + a", "a:b + a", ["1", "a", "a:b"]),
    ("y ~ (a + b)/c", "(a + b) / c", ["1", "a", "b", "a:b:c"]),
    ("y ~ log(x + 1) + I(x^2) + I(-x ** 2)", "log(x + 1) + I(x ** 2) + I(-x ** 2)",
     ["1", "log(x + 1)", "I(x ** 2)", "I(-x ** 2)"]),
    ("y ~ poly(x,3) + C(w, Treatment(reference=\"b\"))",
     "poly(x, 3) + C(w, Treatment(reference='b'))",
     ["1", "poly(x, 3)", "C(w, Treatment(reference='b'))"]),
    ("y ~ `odd name` + factor(w)", "`odd name` + factor(w)", ["1", "`odd name`", "factor(w)"]),
])
def test_formula_algebra(formula: str, fixed: str, terms: list[str]) -> None:
    p = parse_formula(formula)
    assert p.fixed == fixed
    got = g.expand_terms(list(p.fixed_items), formula)
    assert [":".join(g.render_expr(f) for f in t) or "1" for t in got] == terms


def test_random_terms_nested_in_parentheses_as_lme4_findbars() -> None:
    p = parse_formula("Reaction ~ Days + ((1 | Subject) + (0 + Days | Subject))")
    assert [(t.expr, t.group, t.correlated) for t in p.random] == [
        ("1", "Subject", True), ("0 + Days", "Subject", True)]
    assert p.fixed == "Days"


@pytest.mark.parametrize("formula, words", [
    ("y ~ x:(1 | g)", "inside an interaction"),
    ("y ~ 3 + (1 | g)", "cannot be a term"),
    ("y ~ x + cbind(a, b) + (1 | g)", "can only be the response"),
    ("y ~ poly(x, 0) + (1 | g)", "whole number"),
    ("y ~ x^1.5 + (1 | g)", "whole number"),
    ("y ~ C(log(x)) + (1 | g)", "takes a column name"),
    ("y ~ C(x, Treatment(b)) + (1 | g)", "quoted text or a number"),
    ("y ~ x + (1 | g) - (1 | h)", "cannot be subtracted"),
    ("y ~ x ~ z + (1 | g)", "more than one"),
    ("y ~ x + (1 | g))", "unmatched ')'"),
    ("y ~ 1.2.3", "must be digits"),
    ("y ~ `x + (1 | g)", "closing backquote"),
])
def test_malformed_formulas_are_sentences(formula: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_formula(formula)


def test_the_path_from_formula_to_fit_calls_no_eval_and_no_formula_library(
        frame: pd.DataFrame, monkeypatch) -> None:
    """With eval/exec/compile and formulaic made unusable, formulas still build and fit."""
    import builtins
    import sys

    from mfr_outcomes.models.formula import fixed_matrix

    formula = "value ~ post * technique + log(x) + poly(x, 2) + (post | patient_id)"
    fit_mixed(frame, formula)  # warm: every lazy import done before the ban

    def banned(*args, **kwargs):
        raise AssertionError("eval/exec/compile called on the formula path")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, banned)
    monkeypatch.setitem(sys.modules, "formulaic", None)  # any import of it fails
    spec = build_spec(frame, formula)
    assert spec.design.builder == "lean"
    np.testing.assert_array_equal(fixed_matrix(spec, frame), spec.X)
    assert spec.p == 7
    fit = fit_mixed(frame, formula)
    np.testing.assert_allclose(fit.predict(frame.head(5)), fit.fitted()[:5], rtol=1e-10)


@pytest.mark.parametrize("formula, token, pos, char", [
    ("value ~ pοst + (1|patient_id)", "οst", 10, "U+03BF (GREEK SMALL LETTER OMICRON)"),
    ("value ~ post ＋ (1|patient_id)", "＋", 14, "U+FF0B (FULLWIDTH PLUS SIGN)"),
    ("value ~ post + (1∣patient_id)", "∣patient_id", 18, "U+2223 (DIVIDES)"),
    ("vаlue ~ post", "аlue", 2, "U+0430 (CYRILLIC SMALL LETTER A)"),
    ("value ~ I(post\u200b*2)", "\u200b*2", 15, "U+200B (ZERO WIDTH SPACE)"),
])
def test_unicode_lookalikes_are_refused_naming_the_character(formula, token, pos, char):
    with pytest.raises(ValueError) as info:
        g.tokenize(formula)
    assert str(info.value).startswith(
        f"The formula cannot use {token!r} (position {pos}): the character {char} is not "
        f"ASCII; it may look like an allowed one: retype it. Only column names, numbers,")


def test_unicode_lookalike_through_the_cli_is_one_sentence(capsys):
    from mfr_outcomes.cli import main

    data = Path(__file__).resolve().parents[1] / "data" / "synthetic"
    code = main(["fit", str(data), "--measure", "pain_nrs", "--formula",
                 "value ~ pοst + (1|patient_id)"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("mfr-outcomes fit: The formula cannot use 'οst' (position 10): the "
                          "character U+03BF (GREEK SMALL LETTER OMICRON) is not ASCII")
