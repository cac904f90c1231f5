"""Warnings that point at the user's line (numpy and the standard library only).

A warning is only useful where it names the line that caused it: the
user's ``s.decomposition(...)``, not the package's wrapper that called the
code that noticed the problem. A fixed ``stacklevel`` cannot do that here:
the same check is reached through ``STEM4D`` methods, the functional API
(:mod:`hyperspy_cnmf.api`), HyperSpy's own ``s.decomposition(algorithm=
ConstrainedNMF(...))`` and the LiberTEM driver, each at another depth.

- :func:`warn`: ``warnings.warn`` with the stack level computed by walking
  the stack out of this package's files (and HyperSpy's, which calls the
  estimator), the stack-walking form of Python 3.12's
  ``skip_file_prefixes`` that also runs on Python 3.10-3.11;
- :func:`at_user_site`: a decorator for the public entry points. The
  warnings raised inside the call (by any module) are recorded and, when it
  returns or raises, issued again: those that point into this package (a
  fixed ``stacklevel`` of the numerical core, a NumPy ``RuntimeWarning`` of
  a package line) at the user's line, the others unchanged. Nested entry
  points record once (the outermost). The user's warning filters apply
  twice, inside (so ``"error"`` still raises at once and ``"ignore"`` still
  drops) and when issued again at the user's line.

Like every use of :class:`warnings.catch_warnings` before Python 3.14, the
recording swaps module-global state: two threads calling the package at the
same time may see each other's warnings issued again from the other call.
"""

import functools
import os
import sys
import threading
import warnings

__all__ = ["at_user_site", "user_stacklevel", "warn"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_state = threading.local()


def _in_package(filename):
    """True for a file of this package (where a warning should not point)."""
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


def _internal(filename):
    """True for a frame the stack walk steps over: this package's files and HyperSpy's."""
    if _in_package(filename):
        return True
    hyperspy = sys.modules.get(
        "hyperspy"
    )  # not imported: none of its frames can be on the stack
    path = getattr(hyperspy, "__file__", None)
    return bool(path) and os.path.abspath(filename).startswith(
        os.path.dirname(os.path.abspath(path)) + os.sep
    )


def user_stacklevel(start=1):
    """The ``stacklevel`` that makes a ``warnings.warn`` point at the first frame outside.

    Parameters
    ----------
    start : int, default 1
        The frame that calls ``warnings.warn``, counted as ``stacklevel``
        counts it: 1 is the caller of this function.

    Returns
    -------
    int
        The stack level, from that frame, of the first frame that is neither
        this package's nor HyperSpy's; the outermost frame if there is none
        (e.g. the package's own command line).
    """
    frame = sys._getframe(start)
    level = 1
    while frame.f_back is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level


def warn(message, category=UserWarning):
    """``warnings.warn(message, category)`` pointing at the user's line.

    Parameters
    ----------
    message : str or Warning
    category : type, default UserWarning
        A ``Warning`` subclass (ignored when ``message`` is a ``Warning``).
    """
    warnings.warn(message, category, stacklevel=user_stacklevel())


def _issue_again(records):
    """Issue the recorded warnings again: those of package lines at the user's line."""
    for w in records:
        if _in_package(w.filename):
            warnings.warn(w.message, w.category, stacklevel=user_stacklevel())
        else:
            warnings.warn_explicit(
                w.message, w.category, w.filename, w.lineno, source=w.source
            )


def at_user_site(func):
    """Decorate a public entry point: its warnings point at the user's line (see the module)."""

    @functools.wraps(func)
    def entry_point(*args, **kwargs):
        if getattr(_state, "recording", False):
            return func(*args, **kwargs)
        _state.recording = True
        records = []
        try:
            with warnings.catch_warnings(record=True) as records:
                return func(*args, **kwargs)
        finally:
            _state.recording = False
            _issue_again(records)

    return entry_point
