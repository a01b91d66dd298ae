"""Every numpydoc example in the package runs on the shipped synthetic data: examples are tests."""
from __future__ import annotations

import doctest
import importlib
import pkgutil
import warnings

import pytest

import mfr_outcomes

# modules whose docstrings carry examples, with the fewest examples each must keep
MODULES = {
    "mfr_outcomes.study": 8,
    "mfr_outcomes.io": 2,
    "mfr_outcomes.measures": 1,
    "mfr_outcomes.synthetic": 1,
    "mfr_outcomes.effects": 1,
    "mfr_outcomes.qi": 1,
    "mfr_outcomes.power": 1,
    "mfr_outcomes.report": 1,
    "mfr_outcomes.models.fit": 1,
    "mfr_outcomes.models.fast": 1,
    "mfr_outcomes.models.sparse": 1,
    "mfr_outcomes.models.sparse_ldl": 1,
    "mfr_outcomes.models.formula": 1,
    "mfr_outcomes.models.grammar": 2,
    "mfr_outcomes.models.domain": 1,
    "mfr_outcomes.models.emmeans": 1,
    "mfr_outcomes.models.r2": 1,
    "mfr_outcomes.rules": 4,
    "mfr_outcomes.mdc": 1,
    "mfr_outcomes.funnel": 1,
    "mfr_outcomes.report.context": 1,
    "mfr_outcomes.report.lp": 3,
    "mfr_outcomes.report.scope": 3,
    "mfr_outcomes.report.fmt": 1,
    "mfr_outcomes.report.disclosure": 1,
    "mfr_outcomes.report.icons": 1,
    "mfr_outcomes.profile": 2,
    "mfr_outcomes.vocab": 2,
    "mfr_outcomes.datasets": 1,
    "mfr_outcomes.schema_doc": 1,
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_examples_run(name, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # examples read data/synthetic
    module = importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS
                                 | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= MODULES[name]
    assert result.failed == 0


def test_every_module_with_examples_is_listed():
    with_examples = set()
    for info in pkgutil.walk_packages(mfr_outcomes.__path__, "mfr_outcomes."):
        module = importlib.import_module(info.name)
        if any(t.examples for t in doctest.DocTestFinder().find(module)):
            with_examples.add(info.name)
    assert with_examples <= set(MODULES), sorted(with_examples - set(MODULES))
