"""Statistics and the cells they print as: medians, nearest-rank percentiles, spreads.

One definition of each, so that a "p99" or a "median (min-max)" means the same in every
table of every benchmark."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def med(xs: Sequence[float]) -> float:
    """The median; NaN if there is nothing (a cell then reads "-")."""
    return statistics.median(xs) if xs else math.nan


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``xs``, nearest rank; NaN if empty."""
    if not xs:
        return math.nan
    ordered = sorted(xs)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def ms(seconds: float, digits: int = 1) -> str:
    """Seconds as milliseconds; "-" for NaN (nothing measured)."""
    return f"{seconds * 1e3:,.{digits}f}" if seconds == seconds else "-"


def spread(xs: Sequence[float], digits: int = 1) -> str:
    """``median (min-max)``, the value alone when there is one, "-" when none."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:,.{digits}f}"
    return f"{med(xs):,.{digits}f} ({min(xs):,.{digits}f}-{max(xs):,.{digits}f})"


def cell(xs: Sequence[float], scale: float, digits: int = 1) -> str:
    """``median (min)`` of ``xs`` times ``scale`` (the engine tables' cells)."""
    return f"{med(xs) * scale:,.{digits}f} ({min(xs) * scale:,.{digits}f})"


def pct(a: float, b: float) -> str:
    """``a`` over ``b`` as a signed percentage."""
    return f"{(a / b - 1) * 100:+.2f}"


def ratio(a: float, b: float) -> str:
    """``a / b`` as ``1.234x``; "-" when either is missing or ``b`` is zero."""
    return f"{a / b:.3f}x" if b and a == a and b == b else "-"
