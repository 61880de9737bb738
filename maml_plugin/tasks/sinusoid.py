"""Sinusoid regression tasks of the MAML paper (Finn et al. 2017, sec. 5.1).

A task is ``y = A * sin(x - phase)`` with ``A ~ U[0.1, 5]``,
``phase ~ U[0, pi]`` and inputs ``x ~ U[-5, 5]``; support and query points are
drawn independently. Sampling is pure `jax.random`, so it runs inside a jitted
train step with no host round trip::

  sampler = SinusoidTasks(num_support=10, num_query=10)
  meta_batch = sampler.sample(rng, num_tasks=25)      # jittable
  eval_tasks = sampler.held_out(seed=0, num_tasks=600, num_query=100)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)

# Training tasks come from `fold_in(key, _TRAIN_STREAM)`, held-out ones from
# `fold_in(key, _HELD_OUT_STREAM)`: the two streams never share a key.
_TRAIN_STREAM = 0
_HELD_OUT_STREAM = 1


def sinusoid(x: jax.Array, amplitude: jax.Array, phase: jax.Array) -> jax.Array:
  return amplitude * jnp.sin(x - phase)


@dataclasses.dataclass(frozen=True)
class SinusoidTasks:
  """In-process sampler of sinusoid meta-batches (the DESIGN.md contract).

  Attributes:
    num_support: K, support points per task.
    num_query: query points per task (training).
  """

  num_support: int = 10
  num_query: int = 10

  def sample_params(self, rng: jax.Array, num_tasks: int):
    """Amplitudes and phases of `num_tasks` tasks, each shaped [num_tasks]."""
    k_amp, k_phase = jax.random.split(rng)
    amplitude = jax.random.uniform(k_amp, (num_tasks,), minval=AMPLITUDE_RANGE[0],
                                   maxval=AMPLITUDE_RANGE[1])
    phase = jax.random.uniform(k_phase, (num_tasks,), minval=PHASE_RANGE[0],
                               maxval=PHASE_RANGE[1])
    return amplitude, phase

  def sample(self, rng: jax.Array, num_tasks: int, *,
             num_query: int | None = None) -> dict:
    """A meta-batch ``{'support': {'x','y'}, 'query': {'x','y'}}``.

    Leaves are float32 ``[num_tasks, shots, 1]``; the meta-batch also carries
    ``'amplitude'`` and ``'phase'`` ``[num_tasks]`` for plots and checks.
    """
    num_query = self.num_query if num_query is None else num_query
    k_task, k_x = jax.random.split(rng)
    amplitude, phase = self.sample_params(k_task, num_tasks)
    x = jax.random.uniform(k_x, (num_tasks, self.num_support + num_query, 1),
                           minval=INPUT_RANGE[0], maxval=INPUT_RANGE[1])
    y = sinusoid(x, amplitude[:, None, None], phase[:, None, None])
    k = self.num_support
    return {
        'support': {'x': x[:, :k], 'y': y[:, :k]},
        'query': {'x': x[:, k:], 'y': y[:, k:]},
        'amplitude': amplitude,
        'phase': phase,
    }

  def train_batch(self, rng: jax.Array, num_tasks: int) -> dict:
    """Training meta-batch for the key of one step (training stream)."""
    return self.sample(jax.random.fold_in(rng, _TRAIN_STREAM), num_tasks)

  def held_out(self, seed: int, num_tasks: int = 600,
               num_query: int = 100) -> dict:
    """A fixed, seeded set of evaluation tasks, disjoint from training keys."""
    rng = jax.random.fold_in(jax.random.key(seed), _HELD_OUT_STREAM)
    return self.sample(rng, num_tasks, num_query=num_query)
