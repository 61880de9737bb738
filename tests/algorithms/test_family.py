"""What the MAML family's train steps share, against independent
computations, float64: remat's gradient, and the core's task batches (the
same update one task batch at a time for every registered train step is
tests/test_algorithms.py:test_task_batch_size_gives_the_same_update)."""

import jax
import jax.numpy as jnp
import optax
import pytest

from maml_plugin import core
from maml_plugin import algorithms
from tests.helpers import close as _close
from tests.helpers import problem as _problem

pytestmark = pytest.mark.usefixtures('x64')


# --- Memory-flat second order -------------------------------------------------


@pytest.mark.parametrize('name', ['maml', 'mamlpp'])
def test_remat_gives_the_same_meta_gradient(name):
  loss_fn, params, batch = _problem()
  results = []
  for remat in (False, True):
    tx = optax.sgd(1.0)
    algorithm = algorithms.make_algorithm(
        name, loss_fn=loss_fn, tx=tx, inner_lr=0.05, num_inner_steps=4,
        remat_inner_steps=remat)
    state = algorithms.MetaTrainState.create(algorithm.init_params(params),
                                              tx)
    results.append(jax.jit(algorithm.train_step)(
        state, batch, jax.random.key(0))[0].params)
  _close(results[0], results[1])
  g = [jax.grad(core.maml_loss, argnums=1)(
      loss_fn, params, batch, inner_lr=0.05, num_steps=4, remat=r)
       for r in (False, True)]
  _close(g[0], g[1])


def test_remat_is_in_the_compiled_gradient():
  loss_fn, params, batch = _problem()

  def grad_jaxpr(remat):
    return str(jax.make_jaxpr(jax.grad(
        lambda p: core.maml_loss(loss_fn, p, batch, inner_lr=0.05,
                                 num_steps=2, remat=remat)))(params))

  assert 'checkpoint' in grad_jaxpr(True) or 'remat' in grad_jaxpr(True)
  assert 'checkpoint' not in grad_jaxpr(False)
  assert 'remat' not in grad_jaxpr(False)


# --- Task batches -----------------------------------------------------------


def test_over_task_batches_equals_the_whole_meta_batch():
  loss_fn, params, batch = _problem(num_tasks=6)
  fn = jax.value_and_grad(
      lambda p, b: core.maml_loss_and_aux(
          loss_fn, p, b, inner_lr=0.05, num_steps=2,
          metric_fn=lambda p, b: jnp.mean(jnp.abs(b['y']))),
      has_aux=True)
  whole = fn(params, batch)
  for size in (1, 2, 3):
    _close(core.over_task_batches(fn, size)(params, batch), whole)
  # One task at a time really computes per task: each task batch's mean
  # is that task's value (checked through a non-mean reduction).
  firsts = core.over_task_batches(lambda p, b: b['support']['x'][0], 1)(
      params, batch)
  _close(firsts, jnp.mean(batch['support']['x'], axis=0))
  with pytest.raises(ValueError, match='task_batch_size=4: must divide the '
                     'meta-batch size 6'):
    core.over_task_batches(fn, 4)(params, batch)
