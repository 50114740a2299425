"""Exact order statistics: Tukey's five-number summary (as R's ``fivenum``) and percentiles.

R's ``fivenum(x)`` sorts ``x`` (length n) and takes, at 1-based positions
``1, h, (n+1)/2, n+1-h, n`` with ``h = floor((n+3)/2) / 2``, the mean of the
order statistics just below and above each position. The middle three are the
lower hinge, median and upper hinge: hinges, not quartiles (for even n they
sit a quarter position away from type-7 quartiles).

Percentiles use linear interpolation between order statistics (R type 7,
NumPy's default ``method="linear"``). Both need only a handful of order
statistics, so ``np.partition`` at those ranks replaces a full sort.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

PERCENTILES: tuple[float, ...] = (90.0, 95.0, 99.0, 99.9)
"""The percentiles every report shows."""


@dataclass(frozen=True)
class OrderSummary:
    """Five-number summary, percentiles and Tukey outlier count of one sample."""

    n: int
    minimum: float
    lower_hinge: float
    median: float
    upper_hinge: float
    maximum: float
    percentiles: tuple[float, ...]
    outliers: int

    @property
    def fivenum(self) -> tuple[float, float, float, float, float]:
        """(minimum, lower hinge, median, upper hinge, maximum)."""
        return (self.minimum, self.lower_hinge, self.median, self.upper_hinge, self.maximum)


def _positions(n: int) -> list[float]:
    """0-based positions of R's five numbers in the sorted sample."""
    h = ((n + 3) // 2) / 2
    return [0.0, h - 1, (n - 1) / 2, n - h, float(n - 1)]


def fivenum(values: Iterable[float]) -> tuple[float, float, float, float, float]:
    """Tukey's five-number summary exactly as R's ``fivenum()``; NaNs are ignored.

    >>> fivenum([1, 2, 3, 4])
    (1.0, 1.5, 2.5, 3.5, 4.0)
    """
    import numpy as np

    data = np.array(values if hasattr(values, "__len__") else list(values), dtype=np.float64)
    data = data[~np.isnan(data)]
    if data.size == 0:
        raise ValueError("fivenum() of an empty sample: there is no summary of no values.")
    return summarize(data, percentiles=()).fivenum


def summarize(
    data: npt.NDArray[np.float64], percentiles: Sequence[float] = PERCENTILES
) -> OrderSummary:
    """Order statistics of a non-empty float array; partitions ``data`` in place."""
    import numpy as np

    n = int(data.size)
    five_at = _positions(n)
    pct_at = [(n - 1) * p / 100 for p in percentiles]
    ranks = sorted({int(np.floor(p)) for p in five_at + pct_at}
                   | {min(int(np.ceil(p)), n - 1) for p in five_at + pct_at})
    data.partition(ranks)

    def at(position: float) -> float:
        low = int(np.floor(position))
        high = min(int(np.ceil(position)), n - 1)
        return float(data[low] + (position - low) * (data[high] - data[low]))

    # Five numbers sit on whole or half positions, where interpolation is the
    # mean of two order statistics: R's 0.5 * (x[floor] + x[ceiling]).
    five = [0.5 * (float(data[int(np.floor(p))]) + float(data[int(np.ceil(p))]))
            for p in five_at]
    spread = five[3] - five[1]
    low_fence, high_fence = five[1] - 1.5 * spread, five[3] + 1.5 * spread
    outliers = int(np.count_nonzero((data < low_fence) | (data > high_fence)))
    return OrderSummary(n, five[0], five[1], five[2], five[3], five[4],
                        tuple(at(p) for p in pct_at), outliers)
