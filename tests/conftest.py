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


SHARED_DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data')


@pytest.fixture(scope='session')
def omniglot_env(tmp_path_factory):
  """Points MAML_PLUGIN_DATA_DIR at the real Omniglot files (unless the
  environment already does) and the decode cache at a session folder, so
  the zips are decoded once per test session."""
  from maml_plugin.tasks import omniglot  # pylint: disable=g-import-not-at-top
  saved = {k: os.environ.get(k) for k in (omniglot.DATA_DIR_ENV,
                                          omniglot.CACHE_DIR_ENV)}
  if not os.environ.get(omniglot.DATA_DIR_ENV):
    os.environ[omniglot.DATA_DIR_ENV] = SHARED_DATA
  os.environ[omniglot.CACHE_DIR_ENV] = str(
      tmp_path_factory.mktemp('omniglot_cache'))
  yield os.environ[omniglot.DATA_DIR_ENV]
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@pytest.fixture(scope='session')
def omniglot_splits(omniglot_env):
  """Every split of the real Omniglot files, loaded once per session."""
  from maml_plugin.tasks import omniglot  # pylint: disable=g-import-not-at-top
  return {s: omniglot.load_split(s) for s in omniglot.SPLITS}
