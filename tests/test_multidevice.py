"""The task axis sharded over 4 forced CPU devices equals one device."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import multidevice_worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def four_devices(tmp_path_factory):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  workdir = str(tmp_path_factory.mktemp('four'))
  proc = subprocess.run(
      [sys.executable, os.path.join('tests', 'multidevice_worker.py'),
       workdir], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_meta_batch_is_split_over_the_task_axis(four_devices):
  assert four_devices['device_count'] == 4
  assert four_devices['shard_task_counts'] == [6, 6, 6, 6]
  assert four_devices['grads_replicated']


def test_sharded_meta_gradient_equals_one_device(four_devices):
  np.testing.assert_allclose(four_devices['loss_sharded'],
                             four_devices['loss_one_device'], rtol=1e-6)
  for a, b in zip(four_devices['grads_sharded'],
                  four_devices['grads_one_device']):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-6)


def test_sharded_imaml_step_equals_one_device(four_devices):
  """iMAML's per-task CG solves give the same update when the tasks are
  spread over 4 devices."""
  for a, b in zip(four_devices['imaml_sharded'],
                  four_devices['imaml_one_device']):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-6)


def test_four_device_training_matches_one_device_training(four_devices,
                                                         tmp_path):
  assert jax.device_count() == 1
  state = multidevice_worker.train.train_and_evaluate(
      multidevice_worker.small_config(), str(tmp_path))
  assert four_devices['trained_step'] == int(state.step) == 50
  for a, b in zip(four_devices['trained_params'],
                  jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5)


def test_meta_batch_not_divisible_by_devices_is_one_line(four_devices):
  assert four_devices['indivisible_error'] == (
      'config.meta_batch_size=25: must be a multiple of the device count 4 '
      '(the task axis is sharded over the devices)')
