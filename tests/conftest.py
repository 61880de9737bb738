"""Shared test fixtures: float64 for gradient checks, repo paths."""

import os
import sys

import jax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)


@pytest.fixture
def x64():
  """Runs the test with 64-bit floats (for exact gradient comparisons)."""
  with jax.enable_x64(True):
    yield
