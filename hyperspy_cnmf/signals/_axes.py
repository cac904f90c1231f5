"""Default names and units for the axes of a 4D-STEM signal."""

_NAV_NAMES = ("x", "y")
_SIG_NAMES = ("kx", "ky")


def _is_undefined(value):
    return value is None or str(value) in ("", "<undefined>", "Undefined")


def check_4d(signal, purpose="constrained NMF"):
    """Raise a clear error unless the signal is 2+2 dimensional with uniform axes.

    Everything downstream works on a regular grid: the map filter and the map
    spectra use the scan step (``axis.scale``), the beam finder and the
    clustering the detector's pixel size. A non-uniform axis (a HyperSpy
    ``DataAxis`` given by an ``axis`` array, or a ``FunctionalDataAxis``) has
    no step, so it is refused here, before any read, with the remedy.
    """
    am = signal.axes_manager
    if am.navigation_dimension != 2 or am.signal_dimension != 2:
        raise ValueError(
            f"{purpose} needs 4D-STEM data with 2 navigation (scan) and 2 signal "
            f"(detector) dimensions; this signal has {am.navigation_dimension} navigation "
            f"and {am.signal_dimension} signal dimension(s) ({am._get_dimension_str()})"
        )
    for kind, axes in (("navigation", am.navigation_axes), ("signal", am.signal_axes)):
        for axis in axes:
            if not getattr(axis, "is_uniform", True):
                name = (
                    axis.name
                    if not _is_undefined(axis.name)
                    else f"index {axis.index_in_axes_manager}"
                )
                raise ValueError(
                    f"{purpose} needs uniform (evenly spaced) axes, but the {kind} axis {name!r} is "
                    f"non-uniform ({type(axis).__name__} with an explicit axis array). If its points are "
                    "evenly spaced, convert it with `s.axes_manager[...].convert_to_uniform_axis()`; "
                    "otherwise resample the data onto a regular grid first"
                )


def set_default_axes(signal):
    """Give undefined axis names and units of a 4D-STEM signal sensible defaults.

    Only axes whose name or unit is undefined are touched: navigation axes
    become ``x``/``y`` and signal axes ``kx``/``ky``; an undefined unit with a
    scale of 1 becomes ``"px"``. Signals that are not 2+2 dimensional are left
    alone (a clear error is raised where a 4D dataset is needed).
    """
    am = signal.axes_manager
    if am.navigation_dimension != 2 or am.signal_dimension != 2:
        return
    for axes, names in ((am.navigation_axes, _NAV_NAMES), (am.signal_axes, _SIG_NAMES)):
        for axis, name in zip(axes, names):
            if _is_undefined(axis.name):
                axis.name = name
            if _is_undefined(axis.units) and getattr(axis, "scale", None) == 1:
                axis.units = "px"


def axis_info(axis):
    """``{"name", "units", "scale", "offset", "size"}`` of a HyperSpy axis.

    Undefined units read ``"px"``, an undefined name ``""``.
    """
    units = str(axis.units)
    if units in ("", "<undefined>", "None"):
        units = "px"
    name = str(axis.name) if str(axis.name) not in ("", "<undefined>", "None") else ""
    return {
        "name": name,
        "units": units,
        "scale": float(axis.scale),
        "offset": float(axis.offset),
        "size": int(axis.size),
    }


def calibrated_origin_px(signal):
    """The detector pixel ``(x, y)`` where both signal axes read 0 (their calibrated origin).

    Not checked against the detector: callers decide what an origin off the
    detector means.
    """
    ax_x, ax_y = signal.axes_manager.signal_axes
    return -float(ax_x.offset) / float(ax_x.scale), -float(ax_y.offset) / float(
        ax_y.scale
    )
