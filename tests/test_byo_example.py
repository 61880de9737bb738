"""examples/byo_model end to end on real Omniglot, at a tiny budget.

The example is a user's project outside the package: its own NNX network
(Conv, BatchNorm, Dropout) meta-trained by a registered train step,
evaluated with both batch-norm modes, and written back into the module.
"""

import importlib.util
import json
import math
import os
import sys

import jax
import numpy as np
from flax import nnx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, 'examples', 'byo_model')


def _load_example(monkeypatch):
  """The example's train.py as a module (model.py imported beside it, as
  when the script runs)."""
  monkeypatch.syspath_prepend(EXAMPLE)
  monkeypatch.delitem(sys.modules, 'model', raising=False)
  spec = importlib.util.spec_from_file_location(
      'byo_model_train', os.path.join(EXAMPLE, 'train.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_byo_example_trains_evaluates_and_writes_back(omniglot_env, tmp_path,
                                                      monkeypatch):
  if not os.path.isdir(os.path.join(omniglot_env, 'omniglot')):
    raise AssertionError(
        f'{omniglot_env}/omniglot is missing: this test needs the real '
        'Omniglot files (set MAML_PLUGIN_DATA_DIR or provide ../shared/data)')
  train = _load_example(monkeypatch)
  output = tmp_path / 'byo.json'
  args = ['--num_steps=3', '--meta_batch_size=2', '--channels=8',
          '--eval_tasks=4', '--eval_task_batch_size=2', '--eval_steps=2',
          '--log_every=1', '--seed=3', f'--output={output}']
  returned, net = train.main(args)

  results = json.loads(output.read_text())
  assert set(results['eval']) == {'batch_stats', 'running_averages'}
  for mode, curve in results['eval'].items():
    assert sorted(curve, key=int) == ['0', '1', '2'], mode
    for k, v in curve.items():
      assert math.isfinite(v['mean']) and 0 <= v['mean'] <= 1, (mode, k, v)
      assert math.isfinite(v['ci95']), (mode, k, v)
  assert results['eval'] == returned['eval']
  assert results['round_trip_max_abs_diff'] < 1e-5

  # The trained params and running averages are back in the user's module:
  # compare with a fresh module built exactly as the example built it.
  fresh = train.OmniglotCNN(ways=5, channels=8, dropout_rate=0.1,
                            rngs=nnx.Rngs(3))
  for i, (block, init) in enumerate(zip(net.blocks, fresh.blocks)):
    mean, mean0 = np.asarray(block.norm.mean[...]), np.asarray(
        init.norm.mean[...])
    assert np.all(np.isfinite(mean)), i
    assert not np.allclose(mean, mean0), (
        f'block {i}: BatchNorm running mean still at its initial value: '
        'the running averages were not updated or not written back')
    assert not np.allclose(np.asarray(block.norm.var[...]),
                           np.asarray(init.norm.var[...])), i
  trained = jax.tree.leaves(nnx.state(net, nnx.Param))
  initial = jax.tree.leaves(nnx.state(fresh, nnx.Param))
  assert all(a.shape == b.shape for a, b in zip(trained, initial))
  assert not all(np.allclose(a, b) for a, b in zip(trained, initial)), (
      'the module still holds its initial params: not written back')
