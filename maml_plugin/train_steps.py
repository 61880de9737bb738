"""Registered meta train steps: ``train_step(state, batch, rng) -> (state, metrics)``.

Usage in any Flax-examples-style loop::

  train_step = maml_plugin.make_train_step(
      'maml', loss_fn=loss_fn, tx=optax.adam(1e-3), inner_lr=0.01,
      num_inner_steps=1)
  state = maml_plugin.MetaTrainState.create(params, tx)
  train_step = jax.jit(train_step, donate_argnums=0)
  for step in range(num_steps):
    state, metrics = train_step(state, meta_batch, jax.random.fold_in(key, step))

A factory is registered with ``@TRAIN_STEPS.register(name)``, takes its
hyper-parameters as keyword arguments named like the config fields they come
from (``inner_lr``, ``num_inner_steps``, ...; the trainer fills them from the
config by name) and returns a `MetaAlgorithm`: the train step plus the two
things the rest of the plugin needs to know about the algorithm,

* ``init_params(model_params) -> params``: what the train state holds
  (Meta-SGD and MAML++ hold their learned inner rates beside the model, so
  they are meta-trained, checkpointed and restored with it);
* ``inner_loop``: how the algorithm adapts one task (a `core.InnerLoop`),
  which evaluation runs for 0..N steps, so every algorithm is evaluated
  with its own inner loop (learned rates, head only, its inner optimizer).

Registered here: ``maml``, ``fomaml``, ``metasgd``, ``anil``; in
`maml_plugin.reptile`: ``reptile``; in `maml_plugin.mamlpp`: ``mamlpp``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from maml_plugin import checks
from maml_plugin import core
from maml_plugin.metrics import ClassificationTrainMetrics
from maml_plugin.metrics import TrainMetrics
from maml_plugin.registry import Registry

TRAIN_STEPS = Registry('train_step')
TrainStep = Callable[[Any, Any, jax.Array], tuple[Any, Any]]


@flax.struct.dataclass
class MetaTrainState:
  """Everything a meta train step updates: a pytree, checkpointed whole.

  Attributes:
    step: number of meta-updates applied so far (int32 scalar).
    params: the meta-parameters (the initialization the inner loop adapts).
    opt_state: state of the outer optax optimizer.
    model_state: the model's state besides its parameters (NNX batch-norm
      running averages, ...; `core.StatefulLoss`), updated by the train
      step; None for a parameter-only model.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any = None

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation,
             model_state: Any = None) -> 'MetaTrainState':
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=tx.init(params), model_state=model_state)


def _identity(model_params):
  return model_params


@dataclasses.dataclass(frozen=True)
class MetaAlgorithm:
  """What a registered factory returns (see module docstring).

  Attributes:
    train_step: ``train_step(state, batch, rng) -> (state, metrics)``.
    inner_loop_for: ``inner_loop_for(loss_fn) -> core.InnerLoop``: the
      algorithm's own adaptation of one task, for evaluation, given a
      parameter-only loss (a model's state is bound first, `eval_inner_loop`).
    init_params: maps the model's params to the train state's params.
    loss_fn: the training loss the factory was built with.
    stateful_inner_loop: optional ``(loss_fn, model_state) -> InnerLoop``
      for algorithms that use the model state step by step (MAML++'s
      per-step batch-norm statistics); None binds the state once.
    init_model_state: maps the model's state to the train state's
      (MAML++ keeps one copy per inner step).
  """

  train_step: TrainStep
  inner_loop_for: Callable[[core.LossFn], core.InnerLoop]
  init_params: Callable[[Any], Any] = _identity
  loss_fn: Any = None
  stateful_inner_loop: Callable[[Any, Any], core.InnerLoop] | None = None
  init_model_state: Callable[[Any], Any] = _identity

  def eval_inner_loop(self, loss_fn=None, model_state=None) -> core.InnerLoop:
    """The inner loop evaluation runs with `loss_fn` (default: the training
    loss; for a model with state pass its evaluation loss) and the stored
    `model_state`, which evaluation reads and never changes."""
    loss_fn = self.loss_fn if loss_fn is None else loss_fn
    if core.is_stateful(loss_fn) and self.stateful_inner_loop is not None:
      return self.stateful_inner_loop(loss_fn, model_state)
    loop = self.inner_loop_for(core.bind_state(loss_fn, model_state))
    if core.is_stateful(loss_fn):
      loop = loop._replace(
          loss_at=lambda fn, k: core.bind_state(fn, model_state))
    return loop

  @property
  def inner_loop(self) -> core.InnerLoop:
    """`eval_inner_loop` of the training loss (parameter-only models)."""
    return self.eval_inner_loop()


def make_algorithm(name: str, *, loss_fn: core.LossFn,
                   tx: optax.GradientTransformation, **hparams
                   ) -> MetaAlgorithm:
  """Builds the registered algorithm `name`: train step, inner loop, params.

  The train step checks its meta-batch's shapes when traced
  (`checks.check_meta_batch`).
  """
  algorithm = TRAIN_STEPS.lookup(name)(loss_fn=loss_fn, tx=tx, **hparams)
  return dataclasses.replace(
      algorithm, train_step=checks.checked_train_step(algorithm.train_step))


def make_train_step(name: str, *, loss_fn: core.LossFn,
                    tx: optax.GradientTransformation, **hparams) -> TrainStep:
  """Builds the train step of the registered algorithm `name`."""
  return make_algorithm(name, loss_fn=loss_fn, tx=tx, **hparams).train_step


def hparam_names(name: str) -> list[str]:
  """The hyper-parameters (config fields) the factory `name` takes."""
  params = inspect.signature(TRAIN_STEPS.lookup(name)).parameters
  return [p for p in params if p not in _NOT_HPARAMS]


# Factory arguments the trainer supplies itself, not config fields.
_NOT_HPARAMS = ('loss_fn', 'tx', 'metric_fn')


def accepts_metric_fn(name: str) -> bool:
  """Whether the factory `name` reports a metric (e.g. accuracy)."""
  return 'metric_fn' in inspect.signature(TRAIN_STEPS.lookup(name)).parameters


def model_state_of(state) -> Any:
  """``state.model_state``; None for a train state without that field (a
  Flax `TrainState`, which then suits parameter-only models only)."""
  return getattr(state, 'model_state', None)


def apply_meta_gradient(state: MetaTrainState, grads: Any,
                        tx: optax.GradientTransformation) -> MetaTrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1,
                       params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state)


def gradient_train_step(objective, tx: optax.GradientTransformation,
                        task_batch_size: int | None = None,
                        stateful: bool = False) -> TrainStep:
  """A train step descending ``objective(params, batch, model_state, rng) ->
  (loss, MetaOutput)``.

  With `task_batch_size` the gradient is computed that many tasks at a time
  (`core.over_task_batches`): the same meta-gradient, faster on CPU. With
  `stateful` (a `core.StatefulLoss`), the step key is split into one key
  per task before the task batching (the same keys whatever the batching),
  and the new model state (``MetaOutput.model_state``) goes into the train
  state; otherwise the objective gets ``rng=None``.

  When the objective reports a query metric (classification accuracy), the
  metrics are a `ClassificationTrainMetrics` with ``query_accuracy_before``
  and ``query_accuracy_after``; otherwise a `TrainMetrics`.
  """
  def keyed_objective(params, tasks, model_state, *args):
    batch, keys = tasks
    return objective(params, batch, model_state, keys, *args)

  grad_fn = core.over_task_batches(
      jax.value_and_grad(keyed_objective, has_aux=True), task_batch_size)

  def train_step(state, batch, rng: jax.Array):
    tasks = core.with_task_keys(batch, rng if stateful else None)
    (_, aux), grads = grad_fn(state.params, tasks, model_state_of(state))
    new_state = apply_meta_gradient(state, grads, tx)
    if stateful:
      new_state = new_state.replace(model_state=aux.model_state)
    return new_state, train_metrics(aux, grads)

  return train_step


def train_metrics(aux: core.MetaOutput, grads):
  """The step's metrics: `TrainMetrics`, or `ClassificationTrainMetrics`
  when `aux` holds a query metric (accuracy) before and after adapting."""
  outputs = dict(query_loss_before=aux.query_loss_before,
                 query_loss_after=aux.query_loss_after,
                 meta_grad_norm=optax.global_norm(grads))
  if aux.query_metric_before is None:
    return TrainMetrics.single_from_model_output(**outputs)
  return ClassificationTrainMetrics.single_from_model_output(
      query_accuracy_before=aux.query_metric_before,
      query_accuracy_after=aux.query_metric_after, **outputs)


def _maml_like(*, loss_fn, tx, inner_lr, num_inner_steps, first_order,
               remat_inner_steps, task_batch_size, metric_fn=None
               ) -> MetaAlgorithm:
  def objective(params, batch, model_state, rng):
    return core.maml_loss_and_aux(
        loss_fn, params, batch, inner_lr=inner_lr, num_steps=num_inner_steps,
        first_order=first_order, remat=remat_inner_steps, metric_fn=metric_fn,
        model_state=model_state, rng=rng)

  return MetaAlgorithm(
      train_step=gradient_train_step(objective, tx, task_batch_size,
                                     core.is_stateful(loss_fn)),
      inner_loop_for=lambda loss: core.sgd_inner_loop(loss, inner_lr),
      loss_fn=loss_fn)


@TRAIN_STEPS.register('maml')
def make_maml_train_step(*, loss_fn: core.LossFn,
                         tx: optax.GradientTransformation, inner_lr: float,
                         num_inner_steps: int = 1,
                         first_order: bool = False,
                         remat_inner_steps: bool = False,
                         task_batch_size: int | None = None,
                         metric_fn: core.LossFn | None = None
                         ) -> MetaAlgorithm:
  """MAML (Finn et al. 2017): exact second order unless `first_order`.

  `remat_inner_steps` rematerializes each inner step in the backward pass
  (same gradient, memory flat in `num_inner_steps`). `task_batch_size`
  computes the meta-gradient that many tasks at a time
  (`core.over_task_batches`: same gradient, faster on CPU). With `metric_fn`
  (classification accuracy) the metrics also hold ``query_accuracy_before``
  and ``query_accuracy_after``.
  """
  return _maml_like(loss_fn=loss_fn, tx=tx, inner_lr=inner_lr,
                    num_inner_steps=num_inner_steps, first_order=first_order,
                    remat_inner_steps=remat_inner_steps,
                    task_batch_size=task_batch_size, metric_fn=metric_fn)


@TRAIN_STEPS.register('fomaml')
def make_fomaml_train_step(*, loss_fn: core.LossFn,
                           tx: optax.GradientTransformation, inner_lr: float,
                           num_inner_steps: int = 1,
                           task_batch_size: int | None = None,
                           metric_fn: core.LossFn | None = None
                           ) -> MetaAlgorithm:
  """First-order MAML: the query gradient at the adapted params.

  The inner gradient is a constant for the outer derivative, so each inner
  step's Jacobian is the identity (Finn et al. 2017, sec. 5.2).
  """
  return _maml_like(loss_fn=loss_fn, tx=tx, inner_lr=inner_lr,
                    num_inner_steps=num_inner_steps, first_order=True,
                    remat_inner_steps=False, task_batch_size=task_batch_size,
                    metric_fn=metric_fn)


# --- Meta-SGD ---------------------------------------------------------------


def metasgd_params(model_params, inner_lr: float) -> dict:
  """Meta-SGD's train-state params: the model and a rate for every entry."""
  return {'model': model_params,
          'inner_lr': jax.tree.map(lambda p: jnp.full_like(p, inner_lr),
                                   model_params)}


@TRAIN_STEPS.register('metasgd')
def make_metasgd_train_step(*, loss_fn: core.LossFn,
                            tx: optax.GradientTransformation, inner_lr: float,
                            num_inner_steps: int = 1,
                            remat_inner_steps: bool = False,
                            task_batch_size: int | None = None
                            ) -> MetaAlgorithm:
  """Meta-SGD (Li et al. 2017): a learned inner rate for every parameter.

  The state's params are ``{'model': ..., 'inner_lr': ...}`` (`inner_lr` has
  the model's tree and shapes, initialised to the config's `inner_lr`);
  both are meta-trained by the outer optimizer, checkpointed, and used by
  evaluation (``p - inner_lr * grad``, elementwise). The rates are not
  clipped: like the paper, a rate may turn negative if that helps.
  """
  def objective(params, batch, model_state, rng):
    return core.maml_loss_and_aux(
        loss_fn, params['model'], batch, inner_lr=params['inner_lr'],
        num_steps=num_inner_steps, remat=remat_inner_steps,
        model_state=model_state, rng=rng)

  def inner_loop_for(loss):
    return core.InnerLoop(
        init=lambda params: params['model'],
        step=lambda params, p, support, k: core.sgd_step(
            loss, p, support, inner_lr=params['inner_lr']),
        params=lambda p: p)

  return MetaAlgorithm(
      train_step=gradient_train_step(objective, tx, task_batch_size,
                                     core.is_stateful(loss_fn)),
      inner_loop_for=inner_loop_for,
      init_params=functools.partial(metasgd_params, inner_lr=inner_lr),
      loss_fn=loss_fn)


# --- ANIL -------------------------------------------------------------------


def param_path(path) -> str:
  """``'layers/2/kernel/value'`` for a `jax.tree_util` key path."""
  return '/'.join(core.key_path_names(path))


def leaf_paths(params) -> list[str]:
  """`param_path` of every leaf, in `jax.tree.leaves` order."""
  return [param_path(p) for p, _ in
          jax.tree_util.tree_flatten_with_path(params)[0]]


def select_leaves(params, pattern: str, field: str) -> list[bool]:
  """Which leaves' paths (`param_path`) the regular expression `pattern`
  matches, in `jax.tree.leaves` order.

  Raises:
    ValueError: naming ``config.<field>``, the pattern and the paths, if it
      selects no leaf or every leaf (nothing would be left on one side).
  """
  paths = leaf_paths(params)
  regex = re.compile(pattern)
  return _some_but_not_all([bool(regex.search(p)) for p in paths], paths,
                           f'config.{field}={pattern!r}')


def _some_but_not_all(mask, paths, what) -> list[bool]:
  if not any(mask) or all(mask):
    raise ValueError(
        f'{what}: must select some but not all parameters; it selects '
        f'{sum(mask)} of {len(mask)}; parameter paths: {", ".join(paths)}')
  return mask


def head_mask(params, head_filter: str | None) -> list[bool]:
  """Which leaves (in `jax.tree.leaves` order) ANIL's inner loop adapts.

  `head_filter` is a regular expression searched in each leaf's path
  (`param_path`); None means the last layer: the leaves whose path, without
  its last two names (``kernel/value``), equals the last leaf's.

  Raises:
    ValueError: naming the filter and the paths, if it selects no leaf or
      every leaf (then ANIL would be MAML).
  """
  if head_filter is not None:
    return select_leaves(params, head_filter, 'head_filter')
  paths = leaf_paths(params)
  last = paths[-1].split('/')[:-2]
  return _some_but_not_all([p.split('/')[:-2] == last for p in paths], paths,
                           'config.head_filter=None')


def split_leaves(params, mask: list[bool]) -> tuple[list, list]:
  """The leaves `mask` selects and the others, each in leaf order."""
  leaves = jax.tree.leaves(params)
  return ([l for l, m in zip(leaves, mask) if m],
          [l for l, m in zip(leaves, mask) if not m])


def merge_leaves(treedef_of, selected: list, others: list, mask: list[bool]):
  """Inverse of `split_leaves`, in the tree of `treedef_of`."""
  selected, others = iter(selected), iter(others)
  return jax.tree.unflatten(
      jax.tree.structure(treedef_of),
      [next(selected) if m else next(others) for m in mask])


@TRAIN_STEPS.register('anil')
def make_anil_train_step(*, loss_fn: core.LossFn,
                         tx: optax.GradientTransformation, inner_lr: float,
                         num_inner_steps: int = 1, first_order: bool = False,
                         head_filter: str | None = None,
                         remat_inner_steps: bool = False,
                         task_batch_size: int | None = None
                         ) -> MetaAlgorithm:
  """ANIL (Raghu et al. 2020): the inner loop adapts the head only.

  The head is chosen by `head_filter` (see `head_mask`; default: the last
  layer). The body is a constant of the inner loop, so its inner
  gradients are never computed; the outer loop trains body and head, the
  body's meta-gradient flowing through the adapted head.
  """
  def adapt(params, support, model_state, key):
    mask = head_mask(params, head_filter)
    head, body = split_leaves(params, mask)
    loss = restrict_loss(loss_fn, lambda h: merge_leaves(params, h, body,
                                                         mask))
    out = core.adapt(loss, head, support, inner_lr=inner_lr,
                     num_steps=num_inner_steps, first_order=first_order,
                     remat=remat_inner_steps, model_state=model_state,
                     rng=key)
    head, state = out if core.is_stateful(loss_fn) else (out, model_state)
    return merge_leaves(params, head, body, mask), state

  def objective(params, batch, model_state, rng):
    fn = core.as_stateful(loss_fn)

    def per_task(task, key):
      qkey = core.query_key(key)
      before, _ = fn(params, model_state, task['query'], qkey)
      adapted, state = adapt(params, task['support'], model_state, key)
      after, state = fn(adapted, state, task['query'], qkey)
      return (before, after), state

    (before, after), states = core.vmap_tasks(per_task, batch, rng)
    after = jnp.mean(after)
    new_state = None
    if core.is_stateful(loss_fn):
      new_state = jax.lax.stop_gradient(core.mean_over_tasks(states))
    return after, core.MetaOutput(
        query_loss_before=jax.lax.stop_gradient(jnp.mean(before)),
        query_loss_after=after, model_state=new_state)

  def inner_loop_for(loss):
    def eval_step(meta_params, p, support, k):
      del meta_params, k
      mask = head_mask(p, head_filter)
      head, body = split_leaves(p, mask)
      head = core.sgd_step(
          restrict_loss(loss, lambda h: merge_leaves(p, h, body, mask)),
          head, support, inner_lr=inner_lr)
      return merge_leaves(p, head, body, mask)
    return core.InnerLoop(init=lambda params: params, step=eval_step,
                          params=lambda p: p)

  def init_params(model_params):
    head_mask(model_params, head_filter)  # Fail early on a bad filter.
    return model_params

  return MetaAlgorithm(
      train_step=gradient_train_step(objective, tx, task_batch_size,
                                     core.is_stateful(loss_fn)),
      inner_loop_for=inner_loop_for, init_params=init_params,
      loss_fn=loss_fn)


def restrict_loss(loss_fn, full_params: Callable[[Any], Any]):
  """`loss_fn` as a function of part of the params: ``full_params(part)``
  builds the whole tree (ANIL's head with the body held fixed). Keeps the
  form of `loss_fn` (parameter-only or `core.StatefulLoss`)."""
  if core.is_stateful(loss_fn):
    return core.StatefulLoss(lambda part, state, batch, rng: loss_fn.fn(
        full_params(part), state, batch, rng))
  return lambda part, batch: loss_fn(full_params(part), batch)


# Algorithms in their own modules register themselves on import.
from maml_plugin import mamlpp  # pylint: disable=wrong-import-position,unused-import
from maml_plugin import reptile  # pylint: disable=wrong-import-position,unused-import
