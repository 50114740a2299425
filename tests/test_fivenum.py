"""Five-number summaries and percentiles are exact: R's fivenum() and NumPy's percentiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lapse
from lapse.analysis.fivenum import PERCENTILES, summarize


def r_fivenum(values):
    """R's fivenum(), transcribed line by line from R's source (stats/R/fivenum.R)."""
    x = sorted(values)
    n = len(x)
    n4 = math.floor((n + 3) / 2) / 2
    d = [1, n4, (n + 1) / 2, n + 1 - n4, n]
    return tuple(0.5 * (x[math.floor(i) - 1] + x[math.ceil(i) - 1]) for i in d)


# Outputs printed by R 4.x for fivenum(1:n), n = 1..10.
R_OUTPUTS = {
    1: (1, 1, 1, 1, 1),
    2: (1, 1, 1.5, 2, 2),
    3: (1, 1.5, 2, 2.5, 3),
    4: (1, 1.5, 2.5, 3.5, 4),
    5: (1, 2, 3, 4, 5),
    6: (1, 2, 3.5, 5, 6),
    7: (1, 2.5, 4, 5.5, 7),
    8: (1, 2.5, 4.5, 6.5, 8),
    9: (1, 3, 5, 7, 9),
    10: (1, 3, 5.5, 8, 10),
}


@pytest.mark.parametrize("n", range(1, 11))
def test_fivenum_matches_r_for_small_samples(n):
    """For n = 1..10 the summary equals what R prints, hinges and all (not quartiles)."""
    assert lapse.fivenum(range(1, n + 1)) == R_OUTPUTS[n]
    assert lapse.fivenum(range(n, 0, -1)) == R_OUTPUTS[n]


@pytest.mark.parametrize(
    "values",
    [
        [7, 7, 7, 7],
        [5],
        [3, 1, 2, 2, 2, 9],
        [1, 1, 2, 2, 3, 3, 100],
        [1e-9, 2e-9, 3e-9, 1e6],
        [1, 2**53, 2**53 + 2, 3],
        [0.0, -0.0, 0.0],
        [4, 4, 1, 1, 9, 9, 9, 2],
    ],
)
def test_fivenum_tricky_inputs_match_the_transcription_of_r(values):
    """Ties, all-equal values, huge and tiny durations: identical to R's algorithm."""
    assert lapse.fivenum(values) == r_fivenum(values)


def test_fivenum_ignores_nan_and_rejects_empty():
    """NaNs are dropped like R's na.rm=TRUE; an empty sample is an error that says why."""
    assert lapse.fivenum([1.0, float("nan"), 3.0]) == r_fivenum([1.0, 3.0])
    with pytest.raises(ValueError, match="empty"):
        lapse.fivenum([])


durations = st.lists(st.integers(min_value=1, max_value=10**13), min_size=1, max_size=300)


@given(durations)
@settings(max_examples=300, deadline=None)
def test_fivenum_equals_r_and_is_ordered(values):
    """Any sample: equal to R's algorithm; min ≤ lower hinge ≤ median ≤ upper hinge ≤ max."""
    five = lapse.fivenum(values)
    assert five == r_fivenum([float(v) for v in values])
    assert list(five) == sorted(five)
    assert five[0] == min(values)
    assert five[4] == max(values)


@given(durations, st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_fivenum_does_not_depend_on_order(values, random):
    """Shuffling the sample never changes its summary."""
    shuffled = list(values)
    random.shuffle(shuffled)
    assert lapse.fivenum(shuffled) == lapse.fivenum(values)


@given(durations)
@settings(max_examples=300, deadline=None)
def test_percentiles_and_outliers_match_numpy(values):
    """p90..p99.9 equal NumPy's linear percentiles; outliers are those beyond Tukey's fences."""
    data = np.array(values, dtype=np.float64)
    result = summarize(data.copy())
    expected = np.percentile(data, PERCENTILES)
    np.testing.assert_allclose(result.percentiles, expected, rtol=1e-12, atol=1e-9)
    low, high = result.lower_hinge, result.upper_hinge
    fence = 1.5 * (high - low)
    assert result.outliers == int(np.sum((data < low - fence) | (data > high + fence)))
