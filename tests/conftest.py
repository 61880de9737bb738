"""Shared test fixtures: float64 for gradient checks, repo paths."""

import os
import shutil
import sys
import tempfile

import jax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)


# JAX's persistent compilation cache, shared by this test session's
# processes (xdist workers and the trainer runs the tests start inherit the
# variable): many tests compile the same programs (the quick configs' train
# and evaluation steps), and a cache hit loads the executable XLA compiled
# for the first one (the same program, so the same numbers; a quick sine run
# takes about 16 s instead of 27 on a 2-core CPU). Off when the caller set
# its own; MAML_PLUGIN_TEST_NO_COMPILE_CACHE=1 turns it off.
_OWN_CACHE = None
if not os.environ.get('MAML_PLUGIN_TEST_NO_COMPILE_CACHE'):
  if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix='maml_plugin_test_jax_cache_')
    os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
  jax.config.update('jax_compilation_cache_dir',
                    os.environ['JAX_COMPILATION_CACHE_DIR'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))


def pytest_unconfigure(config):
  """The process that made the cache removes it at the end."""
  del config
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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


# The files that hold the slowest tests (`--durations=30` of a full run on
# a 2-core machine), about the slowest first. With `-n 2 --dist loadfile`,
# files are handed to the workers in collection order; starting with the
# longest ones keeps a long file from being the last one left on one worker
# while the other idles.
SLOWEST_FILES = (
    'test_omniglot_train.py', 'test_algorithms.py', 'test_long_runs.py',
    'test_per_step_bn.py', 'test_family.py', 'test_shipped_configs.py',
    'test_kill_resume.py', 'test_registries.py', 'test_models.py',
    'test_imaml.py', 'test_tfds_episodic.py', 'test_multidevice.py',
)


def pytest_collection_modifyitems(items):
  """Runs the slowest files first (a stable sort: the rest keep their
  order, and every test keeps its place within its file)."""
  rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
