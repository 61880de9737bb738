"""Pure MAML math over pytrees: inner-loop adaptation and the meta-objective.

Usage::

  def loss_fn(params, batch):            # pure: (pytree, {'x', 'y'}) -> scalar
    return jnp.mean((predict(params, batch['x']) - batch['y']) ** 2)

  adapted = maml_plugin.adapt(loss_fn, params, support, inner_lr=0.01)
  meta_loss = maml_plugin.maml_loss(loss_fn, params, meta_batch, inner_lr=0.01)
  meta_grad = jax.grad(maml_plugin.maml_loss)(params, ...)   # exact 2nd order

`adapt` works on ONE task; `maml_loss` maps it over the leading task axis of a
meta-batch ``{'support': {...}, 'query': {...}}`` with `jax.vmap`. Inner steps
run under `jax.lax.scan`, so the traced graph does not grow with `num_steps`.

Nothing here does I/O or keeps state: every function is safe under `jax.jit`,
`jax.grad` (to any order), `jax.vmap` and sharding.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Params = Any  # a pytree of arrays
Batch = Any  # a pytree of arrays, e.g. {'x': X, 'y': Y}
LossFn = Callable[[Params, Batch], jax.Array]
# A scalar for every leaf, or a pytree of per-leaf rates shaped like params.
InnerLR = Any


def key_path_names(path) -> list[str]:
  """The names along a `jax.tree_util` key path: ``['layers', '2', 'kernel']``.

  Dict keys, sequence indices and attribute names alike, so parameters can
  be named and matched by path (ANIL's head filter, checkpoint messages).
  """
  names = []
  for key in path:
    for attr in ('key', 'idx', 'name'):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
  return names


class MetaOutput(NamedTuple):
  """What `maml_loss_and_aux` reports besides the meta-loss (per meta-batch).

  Attributes:
    query_loss_before: mean query loss of the unadapted params.
    query_loss_after: mean query loss after adaptation (the meta-loss).
    query_metric_before: mean ``metric_fn`` on the query set before
      adaptation (e.g. accuracy); None when no `metric_fn` is given.
    query_metric_after: the same after adaptation.
  """

  query_loss_before: jax.Array
  query_loss_after: jax.Array
  query_metric_before: jax.Array | None = None
  query_metric_after: jax.Array | None = None


def sgd_step(loss_fn: LossFn, params: Params, batch: Batch, *,
             inner_lr: InnerLR, first_order: bool = False) -> Params:
  """One inner SGD step: ``params - inner_lr * grad loss_fn(params, batch)``.

  Args:
    loss_fn: pure task loss.
    params: pytree of parameters.
    batch: one task's support set.
    inner_lr: a scalar, or a pytree shaped like `params` (Meta-SGD rates).
    first_order: stop the gradient through the inner gradient (FOMAML), so
      the outer derivative of the step is the identity.

  Returns:
    The updated params (same tree, same dtypes).
  """
  grads = jax.grad(loss_fn)(params, batch)
  if first_order:
    grads = jax.lax.stop_gradient(grads)
  if isinstance(inner_lr, (int, float)) or (
      hasattr(inner_lr, 'ndim') and inner_lr.ndim == 0):
    return jax.tree.map(lambda p, g: p - inner_lr * g, params, grads)
  return jax.tree.map(lambda p, g, a: p - a * g, params, grads, inner_lr)


def adapt(loss_fn: LossFn, params: Params, support: Batch, *,
          inner_lr: InnerLR, num_steps: int = 1,
          first_order: bool = False, remat: bool = False) -> Params:
  """Adapts `params` to ONE task with `num_steps` SGD steps on `support`.

  Args:
    loss_fn: pure task loss ``loss_fn(params, batch) -> scalar``.
    params: the meta-parameters (initialization).
    support: the task's support set (no task axis).
    inner_lr: inner learning rate (scalar or pytree like params).
    num_steps: number of inner SGD steps (a Python int >= 0).
    first_order: if True, second-order terms are dropped (FOMAML).
    remat: rematerialize each inner step (`jax.checkpoint` around the step
      body): the backward pass recomputes a step's activations instead of
      storing them, for the same gradient and ~one more forward pass. What
      is still kept per step is the carry (one copy of the params), so
      peak memory of second-order MAML stays flat in `num_steps` wherever
      activations outweigh the params (benchmarks/remat_memory.py).

  Returns:
    The adapted params. Differentiable with respect to `params` (and a
    pytree `inner_lr`), exactly to second order unless `first_order`.
  """
  if num_steps < 0:
    raise ValueError(f'num_steps={num_steps!r}: must be an int >= 0')
  if num_steps == 0:
    return params

  def body(p, _):
    return sgd_step(loss_fn, p, support, inner_lr=inner_lr,
                    first_order=first_order), None

  params, _ = jax.lax.scan(maybe_remat(body, remat), params, None,
                           length=num_steps)
  return params


def maybe_remat(step_body: Callable, remat: bool) -> Callable:
  """`step_body` under `jax.checkpoint` when `remat`, else unchanged.

  Only the carry crosses a step boundary, so the backward pass keeps one
  carry per step and recomputes the step's inner activations.
  """
  return jax.checkpoint(step_body) if remat else step_body


def maml_loss_and_aux(loss_fn: LossFn, params: Params, meta_batch: Batch, *,
                      inner_lr: InnerLR, num_steps: int = 1,
                      first_order: bool = False, remat: bool = False,
                      metric_fn: LossFn | None = None
                      ) -> tuple[jax.Array, MetaOutput]:
  """`maml_loss` plus the query loss before adaptation, for metrics.

  Use as ``jax.value_and_grad(maml_loss_and_aux, has_aux=True)``. With
  `metric_fn` (``metric_fn(params, batch) -> scalar``, e.g. accuracy) the
  output also holds its query mean before and after adaptation; it does not
  change the meta-loss or its gradient.
  """
  def per_task(task):
    adapted = adapt(loss_fn, params, task['support'], inner_lr=inner_lr,
                    num_steps=num_steps, first_order=first_order, remat=remat)
    out = (loss_fn(params, task['query']), loss_fn(adapted, task['query']))
    if metric_fn is not None:
      out += (metric_fn(params, task['query']),
              metric_fn(adapted, task['query']))
    return out

  values = jax.vmap(per_task)(meta_batch)
  after = jnp.mean(values[1])
  means = [jax.lax.stop_gradient(jnp.mean(v)) for v in values]
  metrics = (means[2], means[3]) if metric_fn is not None else (None, None)
  return after, MetaOutput(means[0], after, *metrics)


def maml_loss(loss_fn: LossFn, params: Params, meta_batch: Batch, *,
              inner_lr: InnerLR, num_steps: int = 1,
              first_order: bool = False, remat: bool = False) -> jax.Array:
  """Mean query loss after adaptation over the task axis of `meta_batch`.

  ``jax.grad(maml_loss, argnums=1)`` is the exact second-order MAML
  meta-gradient; with ``first_order=True`` it is the FOMAML gradient.

  Args:
    loss_fn: pure task loss ``loss_fn(params, batch) -> scalar``.
    params: the meta-parameters.
    meta_batch: ``{'support': {...}, 'query': {...}}``, leaves ``[tasks, ...]``.
    inner_lr: inner learning rate (scalar or pytree like params).
    num_steps: inner SGD steps per task.
    first_order: drop second-order terms.
    remat: rematerialize each inner step (see `adapt`); same value and
      gradient, flat memory in `num_steps`.

  Returns:
    A scalar: the meta-loss.
  """
  loss, _ = maml_loss_and_aux(loss_fn, params, meta_batch, inner_lr=inner_lr,
                              num_steps=num_steps, first_order=first_order,
                              remat=remat)
  return loss


def over_task_batches(fn: Callable[..., Any], task_batch_size: int | None
                      ) -> Callable[..., Any]:
  """`fn` run on `task_batch_size` tasks at a time, its outputs averaged.

  `fn(params, meta_batch, *args)` must return a pytree of means over the
  task axis of `meta_batch` (a meta-loss, its `MetaOutput`, its gradient:
  every objective in this package). The wrapped function splits the
  ``[tasks, ...]`` leaves into ``tasks // task_batch_size`` equal task
  batches, runs `fn` on them one after another (`jax.lax.map`, each one
  vmapped inside `fn`) and returns the mean of the outputs, which equals
  `fn` on the whole meta-batch (the same value, up to float rounding).

  Why: under `jax.vmap` every task has its own adapted weights, so each
  convolution or matmul of the model becomes a batched one; XLA's CPU
  backend runs several small unbatched matmuls faster than one batched
  matmul (benchmarks/omniglot_speed.py: about 2x for Conv-4), and only one
  task batch's activations are live at a time. Task batch ``j`` holds the
  tasks ``j, j + n, j + 2n, ...`` (``n`` batches), so a task axis sharded
  in contiguous blocks over devices stays evenly spread in every batch.

  Args:
    fn: ``fn(params, meta_batch, *args) -> pytree`` of task means.
    task_batch_size: tasks per batch; must divide the meta-batch size.
      None: `fn` itself (all tasks in one vmap).

  Returns:
    A function with the signature and result of `fn`.
  """
  if task_batch_size is None:
    return fn

  def wrapped(params, meta_batch, *args):
    num_tasks = jax.tree.leaves(meta_batch)[0].shape[0]
    if num_tasks % task_batch_size:
      raise ValueError(
          f'task_batch_size={task_batch_size}: must divide the meta-batch '
          f'size {num_tasks}')
    num_batches = num_tasks // task_batch_size
    batches = jax.tree.map(
        lambda x: jnp.swapaxes(
            x.reshape((task_batch_size, num_batches) + x.shape[1:]), 0, 1),
        meta_batch)
    outputs = jax.lax.map(lambda b: fn(params, b, *args), batches)
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), outputs)

  return wrapped


class InnerLoop(NamedTuple):
  """How an algorithm adapts ONE task, step by step (used by evaluation).

  The carry holds the adapted params and any inner state (an inner
  optimizer's moments); `meta_params` are the train state's params, which
  may hold more than the model (Meta-SGD's learned rates).

  Attributes:
    init: ``init(meta_params) -> carry`` before any inner step.
    step: ``step(meta_params, carry, support, k) -> carry``: inner step `k`
      (0-based, a traced int32 so one compiled loop serves every step).
    params: ``params(carry) -> model params`` to predict with.
  """

  init: Callable[[Params], Any]
  step: Callable[[Params, Any, Batch, jax.Array], Any]
  params: Callable[[Any], Params]


def sgd_inner_loop(loss_fn: LossFn, inner_lr: InnerLR) -> InnerLoop:
  """Plain SGD at `inner_lr` on the model params (MAML, FOMAML)."""
  return InnerLoop(
      init=lambda meta_params: meta_params,
      step=lambda meta_params, p, support, k: sgd_step(
          loss_fn, p, support, inner_lr=inner_lr),
      params=lambda p: p)
