"""What every algorithm shares: the train state, `MetaAlgorithm`, the registry.

Usage in any Flax-examples-style loop::

  train_step = maml_plugin.make_train_step(
      'maml', loss_fn=loss_fn, tx=optax.adam(1e-3), inner_lr=0.01,
      num_inner_steps=1)
  state = maml_plugin.MetaTrainState.create(params, tx)
  train_step = jax.jit(train_step, donate_argnums=0)
  for step in range(num_steps):
    state, metrics = train_step(state, meta_batch, jax.random.fold_in(key, step))

An algorithm is one module of this package that registers a factory with
its typed hyper-parameters (copy `fomaml.py`, the smallest)::

  @dataclasses.dataclass(frozen=True, kw_only=True)
  class MyHParams(base.HParams):  # inner_lr, num_inner_steps,
    temperature: float = fields.positive(1.0)  # task_batch_size, and yours

  @base.TRAIN_STEPS.register('mine', fields=MyHParams)
  def make_mine(hparams: MyHParams, *, loss_fn, tx) -> base.MetaAlgorithm:
    ...

The hyper-parameters are config fields of the same names: the trainer
fills them from the config (``config.temperature``) and
`config_validation` checks them, so a new field needs no other change.
A factory may also take ``metric_fn`` (e.g. accuracy), which it reports
beside the loss. It returns a `MetaAlgorithm`: the train step plus what the
rest of the plugin needs to know about the algorithm,

* ``init_params(model_params) -> params``: what the train state holds
  (Meta-SGD and MAML++ hold their learned inner rates beside the model, so
  they are meta-trained, checkpointed and restored with it), and
  ``model_params``, its inverse; `make_algorithm`'s train step lifts a
  state of the model's own params into that layout itself
  (`lifting_train_step`), so ``MetaTrainState.create(params, tx)`` works
  for every algorithm;
* ``inner_loop``: how the algorithm adapts one task (a `core.InnerLoop`),
  which evaluation runs for 0..N steps, so every algorithm is evaluated
  with its own inner loop (learned rates, head only, its inner optimizer).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from maml_plugin import checks
from maml_plugin import core
from maml_plugin import fields
from maml_plugin.metrics import ClassificationTrainMetrics
from maml_plugin.metrics import TrainMetrics
from maml_plugin.metrics import with_averages
from maml_plugin.registry import Registry

TrainStep = Callable[[Any, Any, jax.Array], tuple[Any, Any]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class HParams(fields.Fields):
  """The hyper-parameters every algorithm takes (its own add to these).

  Attributes:
    inner_lr: the inner loop's step size (the initial one, where learned);
      required, no default. Every algorithm but Reptile takes plain
      gradient-descent steps ``p - inner_lr * grad`` with it; Reptile's is
      the step size of its `inner_optimizer`, Adam by default
      (`reptile.ReptileHParams`). 0.01 (the MAML paper's alpha) trains
      every algorithm on sinusoids (docs/algorithms.md).
    num_inner_steps: inner steps per task in meta-training (default 1, the
      MAML paper's). Reptile and iMAML need more than one: with one step
      Reptile's update is a plain gradient step on the tasks' loss (no
      meta-learning), and iMAML's implicit gradient assumes the inner loop
      has nearly solved its proximal problem (`imaml.IMAMLHParams`;
      docs/algorithms.md gives settings that train).
    task_batch_size: tasks whose meta-gradient is computed at once
      (`core.over_task_batches`: the same update, faster on CPU); None:
      all tasks of the meta-batch in one `vmap`.
  """

  inner_lr: float = fields.positive()
  num_inner_steps: int = fields.integer(1)
  task_batch_size: int | None = fields.field(
      None, check=fields.or_none(fields.positive_int),
      allowed='an int > 0 that divides config.meta_batch_size, or None '
      '(all tasks in one vmap)', changes_training=False)  # Same update.


TRAIN_STEPS = Registry('train_step', default_fields=HParams)


def rate_meta_lr_field():
  """``rate_meta_lr``, of algorithms that learn inner rates
  (``params['inner_lr']``): the outer optimizer's step size for the rates
  (`components.create_optimizer`); None: the weights' `meta_lr`."""
  return fields.field(None, check=fields.or_none(fields.positive_real),
                      allowed='a finite number > 0')


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
    model_params: the inverse of `init_params`: the model's params in the
      train state's (`model_of` where `init_params` puts them under
      ``'model'``).
  """

  train_step: TrainStep
  inner_loop_for: Callable[[core.LossFn], core.InnerLoop]
  init_params: Callable[[Any], Any] = _identity
  loss_fn: Any = None
  stateful_inner_loop: Callable[[Any, Any], core.InnerLoop] | None = None
  init_model_state: Callable[[Any], Any] = _identity
  model_params: Callable[[Any], Any] = _identity

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
                   tx: optax.GradientTransformation,
                   metric_fn: core.LossFn | None = None, **hparams
                   ) -> MetaAlgorithm:
  """Builds the registered algorithm `name`: train step, inner loop, params.

  Args:
    name: a registered train step (`TRAIN_STEPS.names()`: 'maml', 'fomaml',
      'reptile', 'metasgd', 'anil', 'mamlpp', 'imaml', and yours).
    loss_fn: the task loss, ``loss_fn(params, batch) -> scalar`` (or a
      `core.StatefulLoss`).
    tx: the outer optimizer (the train state's ``opt_state`` is its state).
    metric_fn: a metric reported beside the loss (accuracy), for the
      algorithms that take one (`accepts_metric_fn`).
    **hparams: the algorithm's hyper-parameters, the fields of its
      `HParams` dataclass (`TRAIN_STEPS.fields(name)`, e.g.
      `maml.MAMLHParams`, whose docstring says what each means). Every
      algorithm takes ``inner_lr`` (required: no default),
      ``num_inner_steps=1`` and ``task_batch_size=None`` (`HParams`);
      `describe_hparams(name)` lists all of an algorithm's with their
      defaults, and docs/algorithms.md lists them for every algorithm,
      with settings that meta-train on sinusoids in a loop of your own.

  Returns:
    The `MetaAlgorithm`. Its train step takes a state of the model's own
    params, ``MetaTrainState.create(params, tx)``, for every algorithm
    (`lifting_train_step`), and checks its meta-batch's shapes when traced
    (`checks.check_meta_batch`).

  Raises:
    fields.FieldError: (a ValueError) one line naming a bad, unknown or
      missing hyper-parameter; a missing one also names this call and the
      algorithm's hyper-parameters.
  """
  return _make_algorithm('make_algorithm', name, loss_fn=loss_fn, tx=tx,
                         metric_fn=metric_fn, hparams=hparams)


def _make_algorithm(call: str, name: str, *, loss_fn, tx, metric_fn,
                    hparams) -> MetaAlgorithm:
  factory = TRAIN_STEPS.lookup(name)
  declared = TRAIN_STEPS.fields(name)
  required = [n for n in declared.names() if n not in declared.defaults()]
  missing = [n for n in required if n not in hparams]
  if missing:
    raise fields.FieldError(
        f'{missing[0]} is missing: must be {declared.allowed(missing[0])}; '
        f'{call}({name!r}, ...) requires {", ".join(required)}; its '
        f'hyper-parameters: {describe_hparams(name)}')
  values = declared.build(hparams, owner=f'train_step {name!r}')
  extra = {}
  if metric_fn is not None:
    if not accepts_metric_fn(name):
      raise ValueError(f'train_step {name!r} reports no metric: its factory '
                       'takes no metric_fn')
    extra['metric_fn'] = metric_fn
  algorithm = factory(values, loss_fn=loss_fn, tx=tx, **extra)
  return dataclasses.replace(
      algorithm, train_step=checks.checked_train_step(
          loss_checking_train_step(algorithm, loss_fn, lifting_train_step(
              algorithm, tx))))


def loss_checking_train_step(algorithm: MetaAlgorithm, loss_fn: core.LossFn,
                             train_step: TrainStep) -> TrainStep:
  """`train_step` that first evaluates the loss on one task of its batch,
  on shapes only (`checks.check_task_loss`), at trace time: a batch the
  model cannot take is named in one line, its leaves and their shapes.

  The model's params are the state's (`model_params` once lifted); a
  stateful loss is bound to the state's ``model_state``, unless the
  algorithm keeps that in a layout of its own (MAML++'s per-step
  statistics), where the check is left to the step itself.
  """
  @functools.wraps(train_step)
  def step(state, batch, rng):
    params = state.params
    if in_state_layout(algorithm, params):
      params = algorithm.model_params(params)
    if not core.is_stateful(loss_fn):
      checks.check_task_loss(loss_fn, params, batch)
    elif algorithm.init_model_state is _identity:
      checks.check_task_loss(
          core.bind_state(loss_fn, model_state_of(state), rng), params, batch)
    return train_step(state, batch, rng)

  return step


def make_train_step(name: str, *, loss_fn: core.LossFn,
                    tx: optax.GradientTransformation, **hparams) -> TrainStep:
  """The train step of the registered algorithm `name`:
  ``train_step(state, batch, rng) -> (state, metrics)``, pure; `jax.jit` it.

  The arguments and the hyper-parameters are `make_algorithm`'s: every
  algorithm takes ``inner_lr`` (required), ``num_inner_steps=1`` and
  ``task_batch_size=None``, and its own fields (its `HParams` dataclass,
  `TRAIN_STEPS.fields(name)`; `describe_hparams(name)`; the list in
  docs/algorithms.md). ``state = MetaTrainState.create(params, tx)`` of
  the model's params is a state for every algorithm: one whose train state
  holds more (Meta-SGD's, MAML++'s learned rates) lifts it at the first
  call (`lifting_train_step`).
  """
  metric_fn = hparams.pop('metric_fn', None)
  return _make_algorithm('make_train_step', name, loss_fn=loss_fn, tx=tx,
                         metric_fn=metric_fn, hparams=hparams).train_step


def _hparam_items(name: str, quote: str = '') -> tuple[type, list[str]]:
  """`name`'s HParams dataclass and ``name=default`` (``name (required)``)
  for each of its fields, each name and default between `quote`s."""
  declared = TRAIN_STEPS.fields(name)
  defaults = declared.defaults()
  return declared, [
      f'{quote}{n}={defaults[n]!r}{quote}' if n in defaults
      else f'{quote}{n}{quote} (required)' for n in declared.names()]


def _qualified(cls: type) -> str:
  return f'{cls.__module__}.{cls.__qualname__}'


def describe_hparams(name: str) -> str:
  """The hyper-parameters of the algorithm `name` with their defaults, and
  the dataclass that documents them: ``inner_lr (required),
  num_inner_steps=1, ... (maml_plugin.algorithms.maml.MAMLHParams)``."""
  declared, items = _hparam_items(name)
  return f'{", ".join(items)} ({_qualified(declared)})'


def hparams_list(names: Sequence[str] | None = None) -> str:
  """Markdown: one item per algorithm in `names` (default: every registered
  one), its hyper-parameters and defaults (the list in docs/algorithms.md,
  which a test keeps equal)."""
  lines = []
  for name in TRAIN_STEPS.names() if names is None else names:
    declared, items = _hparam_items(name, quote='`')
    lines.append(f'- `{name}` (`{_qualified(declared)}`): '
                 f'{", ".join(items)}')
  return '\n'.join(lines) + '\n'


def model_of(params):
  """The model's params in train-state params ``{'model': ..., ...}``
  (`MetaAlgorithm.model_params` of Meta-SGD and MAML++)."""
  return params['model']


def holds_inner_rates(params) -> bool:
  """Whether train-state params hold inner rates beside the model
  (``params['inner_lr']``: Meta-SGD's and MAML++'s, learned or not): the
  inner loop then adapts with those, not with the ``inner_lr`` it was
  built with, which only initialised them."""
  return isinstance(params, dict) and 'inner_lr' in params


def _shapes(tree):
  return (jax.tree.structure(tree),
          [(jnp.shape(l), jnp.result_type(l)) for l in jax.tree.leaves(tree)])


def in_state_layout(algorithm: MetaAlgorithm, params) -> bool:
  """Whether `params` are already the train state's params of `algorithm`
  (what its `init_params` makes), rather than the model's own."""
  try:
    model = algorithm.model_params(params)
  except (KeyError, TypeError, IndexError, AttributeError):
    return False  # No model where the layout puts it: the model's own.
  return _shapes(jax.eval_shape(algorithm.init_params, model)) == _shapes(
      params)


def lift_state(state, algorithm: MetaAlgorithm,
               tx: optax.GradientTransformation):
  """`state` of the model's own params, in `algorithm`'s layout: its
  `init_params` (learned rates beside the model), `tx` initialised anew
  for them, and its `init_model_state`."""
  params = algorithm.init_params(state.params)
  lifted = state.replace(params=params, opt_state=tx.init(params))
  if model_state_of(state) is not None:
    lifted = lifted.replace(
        model_state=algorithm.init_model_state(state.model_state))
  return lifted


def lifting_train_step(algorithm: MetaAlgorithm,
                       tx: optax.GradientTransformation) -> TrainStep:
  """`algorithm.train_step` that also takes a state of the model's own
  params (``MetaTrainState.create(params, tx)``, as for MAML) and lifts it
  first (`lift_state`); decided from the params' shapes, at trace time.

  Why: Meta-SGD and MAML++ meta-train learned inner rates beside the model
  (``{'model': ..., 'inner_lr': ...}``), so the state the other algorithms
  take would otherwise fail deep inside the step. The step returns the
  lifted state, so under `jax.jit` the second call compiles once more, for
  that layout; a state made with ``MetaTrainState.create(
  algorithm.init_params(params), tx)`` compiles once.
  """
  train_step = algorithm.train_step

  @functools.wraps(train_step)
  def step(state, batch, rng):
    if not in_state_layout(algorithm, state.params):
      state = lift_state(state, algorithm, tx)
    return train_step(state, batch, rng)

  return step


def hparam_names(name: str) -> list[str]:
  """The hyper-parameters (config fields) of the algorithm `name`."""
  return TRAIN_STEPS.fields(name).names()


def accepts_metric_fn(name: str) -> bool:
  """Whether the factory `name` reports a metric (takes ``metric_fn``)."""
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
                        stateful: bool = False,
                        pass_step: bool = False) -> TrainStep:
  """A train step descending ``objective(params, batch, model_state, rng) ->
  (loss, MetaOutput)``; with `pass_step`, ``objective(..., rng, step)``
  also gets the train state's meta-step (for schedules inside the loss).

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

  def direction(state, tasks):
    step = (state.step,) if pass_step else ()
    (_, aux), grads = grad_fn(state.params, tasks, model_state_of(state),
                              *step)
    return grads, aux, {}

  return meta_update_step(direction, tx, stateful=stateful)


def meta_update_step(direction_fn, tx: optax.GradientTransformation, *,
                     stateful: bool) -> TrainStep:
  """The train step every algorithm shares, around its own update.

  ``direction_fn(state, tasks) -> (grads, output, extra)`` computes the
  meta-update direction from the train state and the meta-batch
  (``(batch, keys)`` of `core.with_task_keys`: one key per task when
  `stateful`, else None); `output` is a `core.MetaOutput` (the new model
  state in ``output.model_state`` when `stateful`) and `extra` more
  scalars for the metrics (iMAML's ``cg_residual``). The step applies
  `tx` to the direction (`apply_meta_gradient`), keeps the model state and
  returns ``(state, train_metrics(output, grads, **extra))``.
  """
  def train_step(state, batch, rng: jax.Array):
    tasks = core.with_task_keys(batch, rng if stateful else None)
    grads, output, extra = direction_fn(state, tasks)
    new_state = apply_meta_gradient(state, grads, tx)
    if stateful:
      new_state = new_state.replace(model_state=output.model_state)
    return new_state, train_metrics(output, grads, **extra)

  return train_step


def train_metrics(aux: core.MetaOutput, grads, **extra):
  """The step's metrics: `TrainMetrics`, or `ClassificationTrainMetrics`
  when `aux` holds a query metric (accuracy) before and after adapting;
  `extra` scalars (iMAML's ``cg_residual``) are averaged beside them
  (`metrics.with_averages`)."""
  outputs = dict(query_loss_before=aux.query_loss_before,
                 query_loss_after=aux.query_loss_after,
                 meta_grad_norm=optax.global_norm(grads), **extra)
  cls = TrainMetrics
  if aux.query_metric_before is not None:
    cls = ClassificationTrainMetrics
    outputs.update(query_accuracy_before=aux.query_metric_before,
                   query_accuracy_after=aux.query_metric_after)
  if extra:
    cls = with_averages(cls, tuple(sorted(extra)))
  return cls.single_from_model_output(**outputs)


# --- Parameter leaves: which ones an algorithm adapts or copies ------------


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
    fields.FieldError: naming `field`, the pattern and the paths, if it
      selects no leaf or every leaf (nothing would be left on one side).
  """
  paths = leaf_paths(params)
  regex = re.compile(pattern)
  return some_but_not_all([bool(regex.search(p)) for p in paths], paths,
                          f'{field}={pattern!r}')


def some_but_not_all(mask, paths, what) -> list[bool]:
  """`mask`, if it selects some leaves but not all; else a
  `fields.FieldError` (a ValueError) that names `what` (``field=value``)
  and the parameter `paths`."""
  if not any(mask) or all(mask):
    raise fields.FieldError(
        f'{what}: must select some but not all parameters; it selects '
        f'{sum(mask)} of {len(mask)}; parameter paths: {", ".join(paths)}')
  return mask


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


def restrict_loss(loss_fn, full_params: Callable[[Any], Any]):
  """`loss_fn` as a function of part of the params: ``full_params(part)``
  builds the whole tree (ANIL's head with the body held fixed). Keeps the
  form of `loss_fn` (parameter-only or `core.StatefulLoss`)."""
  if core.is_stateful(loss_fn):
    return core.StatefulLoss(lambda part, state, batch, rng: loss_fn.fn(
        full_params(part), state, batch, rng))
  return lambda part, batch: loss_fn(full_params(part), batch)
