"""The checks `benchmarks/sine_stability.py` applies to each run of its grid
(docs/sinusoid.md reports their verdicts): each fails on the run it is
there to catch."""

import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'benchmarks'))
import sine_stability  # pylint: disable=g-import-not-at-top


def _rows(*evaluations, nonfinite=0):
  """Evaluations as (un-adapted, 1 step, 10 steps) MSE means."""
  return [{0: a, 1: b, 10: c, 'nonfinite': nonfinite}
          for a, b, c in evaluations]


HEALTHY = _rows((2.98, 0.39, 0.070), (2.97, 0.33, 0.064), (2.95, 0.31, 0.065))


def test_a_healthy_run_passes_both_checks():
  assert sine_stability.check(HEALTHY, 'flagship') == []
  assert sine_stability.check(HEALTHY, 'family') == []


@pytest.mark.parametrize('rows,failed', [
    # The paper's disease: a few tasks diverge after 10 steps at the end.
    (_rows((2.98, 0.45, 0.07), (2.96, 0.34, 3.34)),
     ['10 steps worse than 1', 'adapting does not help']),
    # iMAML's inner loop that stopped moving: 10 steps = 1 step = none.
    (_rows((3.16, 1.15, 0.11), (3.049, 3.055, 3.055)),
     ['adapting does not help']),
    (_rows((2.98, 0.45, 0.07), (2.96, 0.34, math.nan)),
     ['not finite', '10 steps worse than 1', 'adapting does not help']),
])
def test_the_family_check_fails_what_it_is_for(rows, failed):
  assert sine_stability.check(rows, 'family') == failed


@pytest.mark.parametrize('rows,failed', [
    (_rows((2.98, 0.39, 0.07), (2.97, 0.38, 0.07), nonfinite=1),
     ['non-finite tasks']),
    (_rows((2.98, 0.39, 0.07), (2.97, 0.38, 0.13)), ['10-step > 0.12']),
    (_rows((2.98, 0.39, 0.07), (2.97, 0.41, 0.07)), ['1-step > 0.40']),
    # At the first evaluation too (10,000 meta-steps).
    (_rows((2.98, 0.41, 0.07), (2.97, 0.33, 0.07)), ['1-step > 0.40']),
    (_rows((2.98, 0.39, 0.07), (4.50, 0.38, 0.07)),
     ['un-adapted > 1.5x its first value']),
])
def test_the_flagship_check_fails_what_it_is_for(rows, failed):
  assert sine_stability.check(rows, 'flagship') == failed
