"""Helpers the tests share (as torchopt's tests/helpers.py): a float64
sinusoid problem on a small MLP, tree comparison at float64 tolerance, one
task of a meta-batch."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maml_plugin.models import MLP
from maml_plugin.tasks import SinusoidTasks

TOL = dict(rtol=1e-10, atol=1e-12)


def problem(seed=0, num_tasks=3, shots=5, hidden=(8, 8)):
  graphdef, params = nnx.split(MLP(1, hidden, 1, rngs=nnx.Rngs(seed)),
                               nnx.Param)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)

  def loss_fn(p, batch):
    return jnp.mean((nnx.merge(graphdef, p)(batch['x']) - batch['y']) ** 2)

  batch = SinusoidTasks(num_support=shots, num_query=shots).sample(
      jax.random.key(seed + 1), num_tasks)
  batch = jax.tree.map(lambda a: a.astype(jnp.float64), batch)
  return loss_fn, params, batch


def close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **(tol or TOL))


def task(batch, i):
  return jax.tree.map(lambda a: a[i], batch)
