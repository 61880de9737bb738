"""Runs Python as the default install does: TensorFlow is not there.

  env = without_tensorflow.environment(tmp_path)
  subprocess.run([sys.executable, '-m', 'maml_plugin.main', ...], env=env)

`environment` puts a ``sitecustomize.py`` first on ``PYTHONPATH`` that calls
`hide_tensorflow` at start-up: ``import tensorflow`` then fails with
``ModuleNotFoundError``, ``importlib.util.find_spec('tensorflow')`` is None
and its distribution's metadata is not found, as where it is not installed
(libraries check all three: CLU imports it, TFDS and etils look it up).
"""

import importlib.util
import os
import sys

_DISTRIBUTIONS = ('tensorflow', 'tensorflow-cpu', 'tensorflow-intel')
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hidden_module(name: str) -> bool:
  return name == 'tensorflow' or name.startswith('tensorflow.')


def _hidden_distribution(dist) -> bool:
  name = (dist.metadata['Name'] or '').lower().replace('_', '-')
  return name in _DISTRIBUTIONS


class _Hiding:
  """Wraps one `sys.meta_path` finder, blind to TensorFlow."""

  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    find = getattr(self._finder, 'find_spec', None)
    if _hidden_module(name) or find is None:
      return None
    return find(name, path, target)

  def find_distributions(self, *args, **kwargs):
    find = getattr(self._finder, 'find_distributions', None)
    if find is None:
      return iter(())
    return (d for d in find(*args, **kwargs) if not _hidden_distribution(d))

  def invalidate_caches(self):
    invalidate = getattr(self._finder, 'invalidate_caches', None)
    if invalidate is not None:
      invalidate()


def hide_tensorflow() -> None:
  """From now on this process cannot find TensorFlow (call it first)."""
  if any(isinstance(f, _Hiding) for f in sys.meta_path):
    return
  for name in [m for m in sys.modules if _hidden_module(m)]:
    del sys.modules[name]
  sys.meta_path[:] = [_Hiding(f) for f in sys.meta_path]
  importlib.invalidate_caches()


_SITECUSTOMIZE = f"""\
import sys
sys.path.insert(0, {_REPO!r})
from tests import without_tensorflow
sys.path.remove({_REPO!r})
without_tensorflow.hide_tensorflow()
"""


def environment(directory, base=None) -> dict:
  """`base` (default `os.environ`) with a ``sitecustomize.py`` written to
  `directory` first on ``PYTHONPATH``: a Python started with it has no
  TensorFlow."""
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'sitecustomize.py'), 'w') as f:
    f.write(_SITECUSTOMIZE)
  env = dict(os.environ if base is None else base)
  env['PYTHONPATH'] = os.pathsep.join(
      [directory] + [p for p in [env.get('PYTHONPATH')] if p])
  return env
