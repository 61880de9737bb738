"""The sinusoid task distribution of the MAML paper."""

import math

import jax
import numpy as np

from maml_plugin.tasks import SinusoidTasks


def test_meta_batch_has_the_design_contract_shapes():
  batch = SinusoidTasks(num_support=10, num_query=7).sample(
      jax.random.key(0), 25)
  assert batch['support']['x'].shape == (25, 10, 1)
  assert batch['support']['y'].shape == (25, 10, 1)
  assert batch['query']['x'].shape == (25, 7, 1)
  assert batch['query']['y'].shape == (25, 7, 1)


def test_amplitude_phase_and_inputs_follow_the_paper_ranges():
  batch = SinusoidTasks().sample(jax.random.key(1), 5000)
  amp, phase = np.asarray(batch['amplitude']), np.asarray(batch['phase'])
  x = np.asarray(batch['support']['x'])
  assert 0.1 <= amp.min() and amp.max() <= 5.0
  assert 0.0 <= phase.min() and phase.max() <= math.pi
  assert -5.0 <= x.min() and x.max() <= 5.0
  # Uniform: means near the middle of each range.
  assert abs(amp.mean() - 2.55) < 0.1
  assert abs(phase.mean() - math.pi / 2) < 0.1
  y = np.asarray(batch['support']['y'])
  np.testing.assert_allclose(
      y, amp[:, None, None] * np.sin(x - phase[:, None, None]), atol=1e-5)


def test_support_and_query_points_are_drawn_independently():
  batch = SinusoidTasks(num_support=10, num_query=10).sample(
      jax.random.key(2), 50)
  s, q = np.asarray(batch['support']['x']), np.asarray(batch['query']['x'])
  assert not np.any(np.isclose(s[:, :, None, 0], q[:, None, :, 0], atol=0))


def test_same_key_same_tasks_other_key_other_tasks():
  tasks = SinusoidTasks()
  a = tasks.train_batch(jax.random.key(3), 8)
  b = tasks.train_batch(jax.random.key(3), 8)
  c = tasks.train_batch(jax.random.key(4), 8)
  np.testing.assert_array_equal(a['support']['x'], b['support']['x'])
  assert not np.allclose(a['amplitude'], c['amplitude'])


def test_held_out_tasks_are_fixed_and_not_training_tasks():
  tasks = SinusoidTasks()
  h1 = tasks.held_out(seed=0, num_tasks=600, num_query=100)
  h2 = tasks.held_out(seed=0, num_tasks=600, num_query=100)
  assert h1['query']['x'].shape == (600, 100, 1)
  np.testing.assert_array_equal(h1['amplitude'], h2['amplitude'])
  # The training stream of the same seed at step 0 draws other tasks.
  train = tasks.train_batch(jax.random.fold_in(jax.random.key(0), 0), 600)
  assert not np.any(np.isin(np.asarray(train['amplitude']),
                            np.asarray(h1['amplitude'])))
