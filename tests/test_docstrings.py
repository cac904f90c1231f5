"""The shared docstring snippets (``hyperspy_cnmf._docstrings``) are filled everywhere."""

import importlib
import inspect
import pkgutil
import re

import pytest

import hyperspy_cnmf
from hyperspy_cnmf._docstrings import SNIPPETS, fill_docstring

# a line that holds only a placeholder, as fill_doc replaces it
PLACEHOLDER = re.compile(r"^[ \t]*%\(\w+\)s[ \t]*$", re.MULTILINE)


def _documented():
    for info in pkgutil.walk_packages(hyperspy_cnmf.__path__, "hyperspy_cnmf."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != info.name:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{info.name}.{name}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if inspect.isfunction(member):
                        yield f"{info.name}.{name}.{attr}", member


def test_no_placeholder_left_unfilled():
    left = [
        name for name, obj in _documented() if PLACEHOLDER.search(obj.__doc__ or "")
    ]
    assert left == [], f"docstrings with a placeholder but no @fill_doc: {left}"


def test_filled_at_the_placeholder_indentation():
    from hyperspy_cnmf.clustering import cluster_components

    doc = inspect.getdoc(cluster_components)
    assert "\nmirror : bool, default False\n    Also correlate with the mirrored" in doc
    assert "\nparticle_threshold : float, default 0.10\n" in doc


def test_every_snippet_is_a_parameter_entry():
    for name, text in SNIPPETS.items():
        first = text.split("\n", 1)[0]
        assert " : " in first and not first.startswith(" "), name
        assert text.endswith("\n") and not text.endswith("\n\n"), name


def test_unknown_placeholder_raises():
    with pytest.raises(KeyError, match="nonexistent"):
        fill_docstring("A.\n\n    %(nonexistent)s\n")
