"""pytest set-up shared by the tests (``tests/``) and the doctests of the package.

``python -m pytest`` collects both (``testpaths`` and ``--doctest-modules`` in
``pyproject.toml``); the fixtures of synthetic data are in ``tests/conftest.py``.
"""

import matplotlib
import pytest
from _pytest.doctest import DoctestItem

matplotlib.use("agg")  # no figure window, also for the docstrings that plot


@pytest.fixture(autouse=True, scope="session")
def _no_progressbar():
    from hyperspy.defaults_parser import preferences

    preferences.General.show_progressbar = False


@pytest.fixture(autouse=True)
def _close_doctest_figures(request):
    yield
    if isinstance(request.node, DoctestItem):
        import matplotlib.pyplot as plt

        plt.close("all")
