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

Models with state besides their parameters (an NNX model with `BatchNorm`,
`Dropout` or any other `nnx.Variable`) pass a `StatefulLoss`::

  def loss(params, model_state, batch, rng):   # -> (scalar, new model_state)
    ...
  loss_fn = maml_plugin.StatefulLoss(loss)
  adapted, new_state = maml_plugin.adapt(loss_fn, params, support,
                                         inner_lr=0.01, model_state=state,
                                         rng=task_key)

(`maml_plugin.NNXModel(module).task_loss(fn)` builds one from any NNX module.) The
state travels explicitly: each forward pass gets the state the previous one
returned, and the key schedule of `support_key` / `query_key` gives every
task, inner step and support or query pass its own key. The inner loop
adapts parameters only.

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
ModelState = Any  # a pytree of the model's non-parameter state (or None)
# (params, model_state, batch, rng) -> (scalar, new model_state)
StatefulFn = Callable[[Params, ModelState, Batch, Any], tuple[jax.Array, Any]]


class StatefulLoss(NamedTuple):
  """A task loss for a model with state besides its parameters.

  ``fn(params, model_state, batch, rng) -> (loss, new_model_state)``: pure;
  `rng` is a PRNG key (or None when the caller has none, e.g. evaluation)
  for the forward pass's randomness (dropout); `new_model_state` is what the
  forward pass leaves (batch-norm running averages after it), with the
  tree, shapes and dtypes of `model_state`. Calling the object calls `fn`.

  Every function of this module that takes a ``loss_fn`` also takes a
  `StatefulLoss`, and then its `model_state` and `rng` arguments.
  """

  fn: StatefulFn

  def __call__(self, params, model_state, batch, rng):
    return self.fn(params, model_state, batch, rng)


def is_stateful(loss_fn) -> bool:
  """Whether `loss_fn` is a `StatefulLoss` (else ``loss_fn(params, batch)``)."""
  return isinstance(loss_fn, StatefulLoss)


def as_stateful(loss_fn) -> StatefulFn:
  """`loss_fn` in the stateful form ``(params, state, batch, rng) -> (loss,
  state)``; a parameter-only loss passes its state (None) through."""
  if is_stateful(loss_fn):
    return loss_fn.fn
  return lambda params, state, batch, rng: (loss_fn(params, batch), state)


def bind_state(loss_fn, model_state, rng=None) -> LossFn:
  """A parameter-only ``(params, batch) -> loss`` with the state held fixed.

  The new state the forward pass returns is dropped (evaluation never
  changes stored state). A parameter-only `loss_fn` is returned as is.
  """
  if not is_stateful(loss_fn):
    return loss_fn
  return lambda params, batch: loss_fn.fn(params, model_state, batch, rng)[0]


# The key schedule: every task, inner step and support or query forward pass
# gets its own key, the same for a given step key whatever the task batching.
def task_keys(rng, num_tasks: int):
  """One key per task of a meta-batch (None when `rng` is None)."""
  return None if rng is None else jax.random.split(rng, num_tasks)


def support_key(task_key, k):
  """The key of ONE task's support forward pass at inner step `k`."""
  if task_key is None:
    return None
  return jax.random.fold_in(jax.random.fold_in(task_key, 0), k)


def query_key(task_key, k=0):
  """The key of ONE task's query forward pass (after inner step `k`)."""
  if task_key is None:
    return None
  return jax.random.fold_in(jax.random.fold_in(task_key, 1), k)


def mean_over_tasks(tree, axis: int = 0):
  """Mean over the task axis of float leaves; other leaves (integer
  counters, keys) from the first task. None stays None."""
  def mean(x):
    if jnp.issubdtype(x.dtype, jnp.inexact):
      return jnp.mean(x, axis=axis)
    return jnp.take(x, 0, axis=axis)
  return jax.tree.map(mean, tree)


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
    model_state: the model's state after the meta-batch's forward passes
      (`StatefulLoss`; mean over tasks, see `maml_loss_and_aux`); None for a
      parameter-only loss.
  """

  query_loss_before: jax.Array
  query_loss_after: jax.Array
  query_metric_before: jax.Array | None = None
  query_metric_after: jax.Array | None = None
  model_state: Any = None


def _apply_rates(params, grads, inner_lr):
  if isinstance(inner_lr, (int, float)) or (
      hasattr(inner_lr, 'ndim') and inner_lr.ndim == 0):
    return jax.tree.map(lambda p, g: p - inner_lr * g, params, grads)
  return jax.tree.map(lambda p, g, a: p - a * g, params, grads, inner_lr)


def sgd_step(loss_fn: LossFn, params: Params, batch: Batch, *,
             inner_lr: InnerLR, first_order: bool = False,
             model_state: ModelState = None, rng=None):
  """One inner SGD step: ``params - inner_lr * grad loss_fn(params, batch)``.

  Args:
    loss_fn: pure task loss, ``loss_fn(params, batch)`` or a `StatefulLoss`.
    params: pytree of parameters.
    batch: one task's support set.
    inner_lr: a scalar, or a pytree shaped like `params` (Meta-SGD rates).
    first_order: stop the gradient through the inner gradient (FOMAML), so
      the outer derivative of the step is the identity.
    model_state: the model's other state (`StatefulLoss` only).
    rng: the forward pass's key (`StatefulLoss` only; may be None).

  Returns:
    The updated params (same tree, same dtypes); for a `StatefulLoss`,
    ``(params, new_model_state)``, the state the forward pass left.
  """
  fn = as_stateful(loss_fn)
  grads, model_state = jax.grad(fn, has_aux=True)(params, model_state, batch,
                                                  rng)
  if first_order:
    grads = jax.lax.stop_gradient(grads)
  params = _apply_rates(params, grads, inner_lr)
  return (params, model_state) if is_stateful(loss_fn) else params


def adapt(loss_fn: LossFn, params: Params, support: Batch, *,
          inner_lr: InnerLR, num_steps: int = 1,
          first_order: bool = False, remat: bool = False,
          model_state: ModelState = None, rng=None):
  """Adapts `params` to ONE task with `num_steps` SGD steps on `support`.

  Args:
    loss_fn: pure task loss ``loss_fn(params, batch) -> scalar``, or a
      `StatefulLoss`.
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
    model_state: the model's other state (`StatefulLoss` only): step k's
      forward pass gets the state step k-1's left.
    rng: the TASK's key (`StatefulLoss` only); inner step k's forward pass
      uses ``support_key(rng, k)``.

  Returns:
    The adapted params. Differentiable with respect to `params` (and a
    pytree `inner_lr`), exactly to second order unless `first_order`. For a
    `StatefulLoss`, ``(params, model_state)``.
  """
  if num_steps < 0:
    raise ValueError(f'num_steps={num_steps!r}: must be an int >= 0')
  stateful = is_stateful(loss_fn)
  if num_steps == 0:
    return (params, model_state) if stateful else params
  fn = StatefulLoss(as_stateful(loss_fn))

  def body(carry, k):
    p, state = carry
    return sgd_step(fn, p, support, inner_lr=inner_lr,
                    first_order=first_order, model_state=state,
                    rng=support_key(rng, k)), None

  (params, model_state), _ = jax.lax.scan(
      maybe_remat(body, remat), (params, model_state),
      jnp.arange(num_steps, dtype=jnp.int32))
  return (params, model_state) if stateful else params


def maybe_remat(step_body: Callable, remat: bool) -> Callable:
  """`step_body` under `jax.checkpoint` when `remat`, else unchanged.

  Only the carry crosses a step boundary, so the backward pass keeps one
  carry per step and recomputes the step's inner activations.
  """
  return jax.checkpoint(step_body) if remat else step_body


def vmap_tasks(per_task: Callable, meta_batch: Batch, rng=None):
  """``jax.vmap(per_task)(task, task_key)`` over the task axis.

  `rng` is either one key (split into a key per task, `task_keys`), an
  array of per-task keys ``[tasks]`` (as `over_task_batches` hands them
  on), or None (every task gets None).
  """
  num_tasks = jax.tree.leaves(meta_batch)[0].shape[0]
  if rng is not None and rng.ndim == 0:
    rng = task_keys(rng, num_tasks)
  if rng is None:
    return jax.vmap(lambda task: per_task(task, None))(meta_batch)
  return jax.vmap(per_task)(meta_batch, rng)


def maml_loss_and_aux(loss_fn: LossFn, params: Params, meta_batch: Batch, *,
                      inner_lr: InnerLR, num_steps: int = 1,
                      first_order: bool = False, remat: bool = False,
                      metric_fn: LossFn | None = None,
                      model_state: ModelState = None, rng=None
                      ) -> tuple[jax.Array, MetaOutput]:
  """`maml_loss` plus the query loss before adaptation, for metrics.

  Use as ``jax.value_and_grad(maml_loss_and_aux, has_aux=True)``. With
  `metric_fn` (``metric_fn(params, batch) -> scalar``, e.g. accuracy; a
  `StatefulLoss` when `loss_fn` is one) the output also holds its query
  mean before and after adaptation; it does not change the meta-loss or its
  gradient.

  With a `StatefulLoss`, each task starts from `model_state`; its inner
  steps' support forward passes and then its query forward pass after
  adaptation each get the state the previous pass left (batch-norm running
  averages see exactly those passes; the "before" query pass and the
  metrics feed nothing). ``MetaOutput.model_state`` is the mean over tasks
  of the state each task ends with (`mean_over_tasks`). `rng` is the step's
  key (or one key per task); see `support_key` and `query_key`.
  """
  fn = as_stateful(loss_fn)
  stateful = is_stateful(loss_fn)
  metric = None if metric_fn is None else as_stateful(metric_fn)

  def per_task(task, key):
    adapted, state = adapt(StatefulLoss(fn), params, task['support'],
                           inner_lr=inner_lr, num_steps=num_steps,
                           first_order=first_order, remat=remat,
                           model_state=model_state, rng=key)
    qkey = query_key(key)
    after, state = fn(adapted, state, task['query'], qkey)
    before, _ = fn(params, model_state, task['query'], qkey)
    out = (before, after)
    if metric is not None:
      out += (metric(params, model_state, task['query'], qkey)[0],
              metric(adapted, state, task['query'], qkey)[0])
    return out, state

  values, states = vmap_tasks(per_task, meta_batch, rng)
  after = jnp.mean(values[1])
  means = [jax.lax.stop_gradient(jnp.mean(v)) for v in values]
  metrics = (means[2], means[3]) if metric_fn is not None else (None, None)
  new_state = (jax.lax.stop_gradient(mean_over_tasks(states)) if stateful
               else None)
  return after, MetaOutput(means[0], after, *metrics, model_state=new_state)


def maml_loss(loss_fn: LossFn, params: Params, meta_batch: Batch, *,
              inner_lr: InnerLR, num_steps: int = 1,
              first_order: bool = False, remat: bool = False,
              model_state: ModelState = None, rng=None) -> jax.Array:
  """Mean query loss after adaptation over the task axis of `meta_batch`.

  ``jax.grad(maml_loss, argnums=1)`` is the exact second-order MAML
  meta-gradient; with ``first_order=True`` it is the FOMAML gradient.

  Args:
    loss_fn: pure task loss ``loss_fn(params, batch) -> scalar``, or a
      `StatefulLoss`.
    params: the meta-parameters.
    meta_batch: ``{'support': {...}, 'query': {...}}``, leaves ``[tasks, ...]``.
    inner_lr: inner learning rate (scalar or pytree like params).
    num_steps: inner SGD steps per task.
    first_order: drop second-order terms.
    remat: rematerialize each inner step (see `adapt`); same value and
      gradient, flat memory in `num_steps`.
    model_state: the model's other state (`StatefulLoss` only).
    rng: the meta-step's key (`StatefulLoss` only; see `maml_loss_and_aux`).

  Returns:
    A scalar: the meta-loss.
  """
  loss, _ = maml_loss_and_aux(loss_fn, params, meta_batch, inner_lr=inner_lr,
                              num_steps=num_steps, first_order=first_order,
                              remat=remat, model_state=model_state, rng=rng)
  return loss


def over_task_batches(fn: Callable[..., Any], task_batch_size: int | None
                      ) -> Callable[..., Any]:
  """`fn` run on `task_batch_size` tasks at a time, its outputs averaged.

  `fn(params, meta_batch, *args)` must return a pytree of means over the
  task axis of `meta_batch` (a meta-loss, its `MetaOutput`, its gradient:
  every objective in this package). The wrapped function splits the
  ``[tasks, ...]`` leaves into ``tasks // task_batch_size`` equal task
  batches, runs `fn` on them one after another (`jax.lax.map`, each one
  vmapped inside `fn`) and returns the mean of the outputs
  (`mean_over_tasks`), which equals `fn` on the whole meta-batch (the same
  value, up to float rounding).

  `meta_batch` may be a tuple ``(meta_batch, task_keys)`` with one key per
  task: the keys are split with their tasks, so a task's randomness does
  not depend on `task_batch_size`.

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
    return mean_over_tasks(outputs)

  return wrapped


def with_task_keys(meta_batch: Batch, rng):
  """``(meta_batch, task_keys(rng, tasks))``, the form `over_task_batches`
  splits together; ``(meta_batch, None)`` when `rng` is None."""
  num_tasks = jax.tree.leaves(meta_batch)[0].shape[0]
  return meta_batch, task_keys(rng, num_tasks)


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
    loss_at: ``loss_at(loss_fn, k) -> loss_fn``: the loss evaluation
      measures after `k` inner steps (k = 0: before adapting); MAML++'s
      per-step batch-norm statistics pick step k's. None: `loss_fn`.
  """

  init: Callable[[Params], Any]
  step: Callable[[Params, Any, Batch, jax.Array], Any]
  params: Callable[[Any], Params]
  loss_at: Callable[[Any, Any], Any] | None = None


def sgd_inner_loop(loss_fn: LossFn, inner_lr: InnerLR) -> InnerLoop:
  """Plain SGD at `inner_lr` on the model params (MAML, FOMAML).

  `loss_fn` is parameter-only here: evaluation binds a model's state first
  (`bind_state`)."""
  return InnerLoop(
      init=lambda meta_params: meta_params,
      step=lambda meta_params, p, support, k: sgd_step(
          loss_fn, p, support, inner_lr=inner_lr),
      params=lambda p: p)
