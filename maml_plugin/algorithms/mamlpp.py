"""MAML++ (Antoniou et al. 2019) as a registered train step, ``'mamlpp'``.

Usage::

  algorithm = make_algorithm('mamlpp', loss_fn=loss_fn, tx=tx, inner_lr=0.01,
                             num_inner_steps=5, msl_anneal_steps=10_000,
                             learn_inner_lr=True, first_order_steps=5_000,
                             per_step_bn=False)  # True for batch norm

The parts of MAML++ that apply to any model, an MLP included:

* MSL, multi-step loss: the meta-loss is ``sum_k w_k * query_loss_k`` over
  the inner steps ``k = 1..N``. The weights start uniform (1/N) and are
  annealed linearly over `msl_anneal_steps` meta-steps until every
  non-final weight is ``0.03 / N`` (the paper's floor) and the final step
  carries the rest. ``msl_anneal_steps=0`` turns MSL off (final step only);
  ``msl_anneal_steps=None`` keeps the weights uniform for the whole run.
* LSLR: a learned inner rate per parameter tensor (a layer's kernel, its
  bias) and per inner step, meta-trained with the weights; held in the
  state as ``params = {'model': ..., 'inner_lr': ...}`` (each rate leaf has
  shape ``[num_inner_steps]``). With ``learn_inner_lr=False`` the rates are
  held fixed at `inner_lr` (their meta-gradient is zero).
* Derivative-order annealing: first-order meta-gradients for the first
  `first_order_steps` meta-steps, exact second order afterwards.
* Cosine annealing of the meta learning rate: an outer-optimizer schedule,
  set by ``config.meta_lr_schedule='cosine'`` (configs/maml_sine.py:mamlpp).

For a model with batch norm (Conv-4, configs/maml_omniglot.py:mamlpp):

* BNWB, per-step batch-norm weights (``per_step_bn=True``): the leaves that
  `per_step_bn_filter` selects (a regular expression over parameter paths;
  default: Conv-4's ``scale`` and ``shift``) get one copy per inner step,
  held in ``params['per_step_bn']`` (each leaf ``[num_inner_steps, ...]``,
  all copies starting at the model's value). Inner step k runs the support
  forward with copy k and the query loss after step k uses copy k; the
  unadapted model uses copy 0. As in the reference code the copies are not
  adapted in the inner loop, only meta-learned by the outer optimizer (at
  `meta_lr`, like the weights), and the model's own batch-norm leaves are
  then unused (their meta-gradient is zero). A filter that selects
  no leaf (the MLP has no batch norm) is a config error.
* BNRS, per-step batch-norm statistics (``per_step_bn_stats=True``, for a
  model with state, `core.StatefulLoss`, e.g. NNX `BatchNorm` running
  averages): the train state's ``model_state`` holds one independent copy
  per inner step (each leaf ``[num_inner_steps, ...]``, all starting at the
  model's state; separate arrays, so updating one never touches another,
  unlike the reference code, whose backup and restore of the statistics
  share storage). Inner step k's support forward and the query forward
  after step k use and update copy k; the meta-step stores the mean over
  tasks. Evaluation with stored statistics reads copy k at step k (copy 0
  before adapting). Conv-4 (`models.Conv4`) keeps no running statistics:
  its batch norm always uses the batch's own, so BNRS does not apply to it.

Evaluation with more inner steps than training: step ``k >= num_inner_steps``
reuses the LAST learned rate (step ``num_inner_steps - 1``'s) and the last
batch-norm copy, since none was learned for it; steps before it use their
own.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from maml_plugin import core
from maml_plugin import fields
from maml_plugin.algorithms import base

MSL_FLOOR = 0.03  # times 1/N: the smallest weight of a non-final step.
# The batch-norm scale and shift of `models.ConvBlock` (Conv4's blocks).
PER_STEP_BN_FILTER = r'(^|/)(scale|shift)/value$'


def msl_weights(step, num_steps: int, anneal_steps: int | None) -> jax.Array:
  """Per-inner-step loss weights ``[num_steps]`` at meta-step `step`
  (`anneal_steps` None: uniform at every step)."""
  if anneal_steps is None:
    return jnp.full((num_steps,), 1.0 / num_steps)
  if anneal_steps == 0 or num_steps == 1:
    return jnp.zeros((num_steps,)).at[-1].set(1.0)
  # The default float: float64 under x64, so weights are exact there.
  frac = jnp.minimum(jnp.asarray(step, jnp.result_type(float)) / anneal_steps,
                     1.0)
  nonfinal = jnp.maximum((1.0 - frac) / num_steps, MSL_FLOOR / num_steps)
  weights = jnp.full((num_steps,), nonfinal)
  return weights.at[-1].set(1.0 - (num_steps - 1) * nonfinal)


def mamlpp_params(model_params, *, inner_lr: float, num_inner_steps: int,
                  per_step_bn: 'PerStepBatchNorm | None' = None):
  """MAML++'s train-state params: the model and per-step rates per tensor.

  With `per_step_bn`, also ``'per_step_bn'``: one copy per inner step of
  each batch-norm leaf, every copy starting at the model's value.
  """
  params = {'model': model_params,
            'inner_lr': jax.tree.map(
                lambda p: jnp.full((num_inner_steps,), inner_lr, p.dtype),
                model_params)}
  if per_step_bn is not None:
    params['per_step_bn'] = per_step_bn.init(model_params, num_inner_steps)
  return params


def at_step(per_step, k, num_inner_steps: int):
  """Row `k` of every leaf of a per-step tree (LSLR rates ``[N]``, per-step
  statistics ``[N, ...]``); steps past training reuse the last row."""
  k = jnp.minimum(k, num_inner_steps - 1)
  return jax.tree.map(lambda r: r[k], per_step)


rates_at = at_step  # The rates of inner step `k`.


@dataclasses.dataclass(frozen=True)
class PerStepBatchNorm:
  """BNWB: the batch-norm leaves, one meta-learned copy per inner step.

  `mask` marks, in `jax.tree.leaves` order of the model params, the leaves
  that `per_step_bn_filter` selects; `names` are their key paths. The copies
  live in the train state as a nested dict along those names (e.g.
  ``['blocks']['0']['scale']['value']``), each leaf ``[num_inner_steps,
  ...]``. At inner step k, copy k replaces the model's own leaves for the
  support forward of step k and the query loss after it; the inner loop
  never updates them (the outer loop does), and the model's own batch-norm
  leaves, and their LSLR rates in ``params['inner_lr']``, are then never
  used (zero meta-gradient, so they stay at their initial values).
  """

  mask: tuple[bool, ...]
  names: tuple[tuple[str, ...], ...]

  @classmethod
  def from_params(cls, model_params, pattern: str) -> 'PerStepBatchNorm':
    """Raises ValueError (a config error) if `pattern` selects no leaf."""
    mask = base.select_leaves(model_params, pattern,
                                     'per_step_bn_filter')
    paths = jax.tree_util.tree_flatten_with_path(model_params)[0]
    names = [tuple(core.key_path_names(p)) for (p, _), m in zip(paths, mask)
             if m]
    return cls(tuple(mask), tuple(names))

  def init(self, model_params, num_steps: int) -> dict:
    """`num_steps` copies of the model's own batch-norm leaves."""
    leaves, _ = base.split_leaves(model_params, list(self.mask))
    return self.nest([jnp.broadcast_to(l, (num_steps, *l.shape))
                      for l in leaves])

  def nest(self, stacked: list) -> dict:
    """The train-state form (nested dict along `names`) of `stacked`."""
    copies = {}
    for names, leaf in zip(self.names, stacked, strict=True):
      node = copies
      for name in names[:-1]:
        node = node.setdefault(name, {})
      node[names[-1]] = leaf
    return copies

  def stacked(self, copies) -> list:
    """The copies as a list in leaf order, each ``[num_steps, ...]``."""
    out = []
    for names in self.names:
      node = copies
      for name in names:
        node = node[name]
      out.append(node)
    return out

  def at(self, copies, k, num_steps: int) -> list:
    """Step `k`'s copies; steps past training reuse the last one."""
    k = jnp.minimum(k, num_steps - 1)
    return [c[k] for c in self.stacked(copies)]

  def put(self, model_params, bn_leaves: list):
    """`model_params` with its batch-norm leaves replaced by `bn_leaves`."""
    _, others = base.split_leaves(model_params, list(self.mask))
    return base.merge_leaves(model_params, bn_leaves, others,
                                    list(self.mask))


def inner_step(loss_fn: core.LossFn, params, support, *, rates, bn=None,
               bn_leaves=None, first_order: bool = False, model_state=None,
               rng=None):
  """One MAML++ inner step of ONE task at the step's own rates.

  With `bn` (a `PerStepBatchNorm`), the step's copies `bn_leaves` are put in
  place first and only the other leaves are updated; the result holds
  `bn_leaves`, so the loss after the step uses the same copies. For a
  `core.StatefulLoss` returns ``(params, model_state)``.
  """
  state_kw = dict(model_state=model_state, rng=rng)
  if bn is None:
    return core.sgd_step(loss_fn, params, support, inner_lr=rates,
                         first_order=first_order, **state_kw)
  mask = list(bn.mask)
  params = bn.put(params, bn_leaves)
  _, adapted = base.split_leaves(params, mask)
  _, adapted_rates = base.split_leaves(rates, mask)
  adapted_loss = base.restrict_loss(
      loss_fn, lambda leaves: base.merge_leaves(params, bn_leaves,
                                                       leaves, mask))
  out = core.sgd_step(adapted_loss, adapted, support, inner_lr=adapted_rates,
                      first_order=first_order, **state_kw)
  adapted, state = out if core.is_stateful(loss_fn) else (out, None)
  adapted = base.merge_leaves(params, bn_leaves, adapted, mask)
  return (adapted, state) if core.is_stateful(loss_fn) else adapted


def per_step_query_losses(loss_fn: core.LossFn, params, task, *, inner_lr,
                          num_steps: int, first_order: bool, remat: bool,
                          bn: PerStepBatchNorm | None = None,
                          bn_copies=None) -> jax.Array:
  """Query loss of ONE task after each inner step 1..N: ``[num_steps]``."""
  return _adapt_per_step(loss_fn, params, task, inner_lr=inner_lr,
                         first_order=first_order, remat=remat, bn=bn,
                         bn_copies=bn_copies)[1]


def _adapt_per_step(loss_fn, params, task, *, inner_lr, first_order, remat,
                    bn, bn_copies, model_state=None, rng=None,
                    per_step_stats: bool = False, unroll: bool = False):
  """``(params after the last step, query losses [N], model state)``.

  The model state (a `core.StatefulLoss`; None otherwise) is threaded
  through step k's support forward and the query forward after it, in
  order; with `per_step_stats` its leaves are ``[N, ...]`` and step k
  threads copy k only, returning the N updated copies.
  """
  fn = core.StatefulLoss(core.as_stateful(loss_fn))
  num_steps = jax.tree.leaves(inner_lr)[0].shape[0]

  def step(p, state, rates, bn_leaves, k):
    p, state = inner_step(fn, p, task['support'], rates=rates, bn=bn,
                          bn_leaves=bn_leaves, first_order=first_order,
                          model_state=state, rng=core.support_key(rng, k))
    loss, state = fn.fn(p, state, task['query'], core.query_key(rng, k))
    return p, state, loss

  def body(carry, xs):
    rates, bn_leaves, k, state_k = xs
    if per_step_stats:
      p, state_k, loss = step(carry, state_k, rates, bn_leaves, k)
      return p, (loss, state_k)
    p, state = carry
    p, state, loss = step(p, state, rates, bn_leaves, k)
    return (p, state), (loss, None)

  # Leaves of rates and copies are [num_steps]: scan hands step k its own.
  # With `unroll` the steps are one straight program: the rolled loop stacks
  # every step's residuals into buffers and slices them back out in the
  # backward pass (`unroll_inner_steps`).
  stacked = None if bn is None else bn.stacked(bn_copies)
  steps = jnp.arange(num_steps, dtype=jnp.int32)
  if per_step_stats:
    params, (losses, states) = jax.lax.scan(
        core.maybe_remat(body, remat), params,
        (inner_lr, stacked, steps, model_state), unroll=unroll)
    return params, losses, states
  (params, state), (losses, _) = jax.lax.scan(
      core.maybe_remat(body, remat), (params, model_state),
      (inner_lr, stacked, steps, None), unroll=unroll)
  return params, losses, state


def mamlpp_loss_and_aux(loss_fn: core.LossFn, params, meta_batch, *, step,
                        num_inner_steps: int, msl_anneal_steps: int | None,
                        learn_inner_lr: bool, first_order: bool,
                        remat: bool = False,
                        bn: PerStepBatchNorm | None = None,
                        metric_fn: core.LossFn | None = None,
                        model_state=None, rng=None,
                        per_step_stats: bool = False, unroll: bool = False):
  """The MAML++ meta-loss (MSL-weighted) and `core.MetaOutput` for metrics.

  With `metric_fn` (e.g. accuracy) the output also holds its query mean
  before adapting and after the last inner step.

  `params` is ``{'model': ..., 'inner_lr': ...}`` (`mamlpp_params`), plus
  ``'per_step_bn'`` when `bn` is given. With MSL off, the rates fixed and
  no per-step batch norm this is `core.maml_loss_and_aux`. Before
  adaptation, the model is evaluated with step 0's batch-norm copies (and
  step 0's statistics with `per_step_stats`). `model_state` and `rng` as in
  `core.maml_loss_and_aux`; ``MetaOutput.model_state`` is the mean over
  tasks of the state each task leaves.
  """
  model, rates = params['model'], params['inner_lr']
  if not learn_inner_lr:
    rates = jax.lax.stop_gradient(rates)
  copies = None if bn is None else params['per_step_bn']
  unadapted = model if bn is None else bn.put(
      model, bn.at(copies, 0, num_inner_steps))
  fn = core.as_stateful(loss_fn)
  metric = None if metric_fn is None else core.as_stateful(metric_fn)
  state_before = (at_step(model_state, 0, num_inner_steps)
                  if per_step_stats else model_state)

  def per_task(task, key):
    adapted, after, state = _adapt_per_step(
        loss_fn, model, task, inner_lr=rates, first_order=first_order,
        remat=remat, bn=bn, bn_copies=copies, model_state=model_state,
        rng=key, per_step_stats=per_step_stats, unroll=unroll)
    qkey = core.query_key(key, num_inner_steps)
    out = (fn(unadapted, state_before, task['query'], qkey)[0], after)
    if metric is not None:
      state_last = (at_step(state, num_inner_steps - 1, num_inner_steps)
                    if per_step_stats else state)
      out += (metric(unadapted, state_before, task['query'], qkey)[0],
              metric(adapted, state_last, task['query'], qkey)[0])
    return out, state

  values, states = core.vmap_tasks(per_task, meta_batch, rng)
  after = jnp.mean(values[1], axis=0)  # values[1]: [tasks, steps]
  weights = msl_weights(step, num_inner_steps, msl_anneal_steps)
  loss = jnp.sum(weights * after)
  metrics = (None, None)
  if metric_fn is not None:
    metrics = tuple(jax.lax.stop_gradient(jnp.mean(v)) for v in values[2:])
  new_state = None
  if core.is_stateful(loss_fn):
    new_state = jax.lax.stop_gradient(core.mean_over_tasks(states))
  return loss, core.MetaOutput(
      jax.lax.stop_gradient(jnp.mean(values[0])),
      jax.lax.stop_gradient(after[-1]), *metrics, model_state=new_state)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MAMLPPHParams(base.HParams):
  """`base.HParams` (`inner_lr`: every learned rate's initial value) and
  the parts of MAML++ (module docstring).

  Attributes:
    msl_anneal_steps: meta-steps over which the multi-step loss weights
      anneal to the final step's (0: MSL off; None: uniform, never
      annealed).
    learn_inner_lr: meta-learn the per-layer, per-step rates (LSLR).
    first_order_steps: first-order meta-gradients for this many meta-steps.
    per_step_bn: one meta-learned copy per inner step of the batch-norm
      leaves that `per_step_bn_filter` selects (BNWB).
    per_step_bn_filter: regular expression over parameter paths.
    per_step_bn_stats: one copy per inner step of the model's batch-norm
      statistics (BNRS; a model with state, `core.StatefulLoss`).
    remat_inner_steps: rematerialize each inner step (same gradient).
    unroll_inner_steps: compile the inner steps as one unrolled program
      instead of a loop (same gradient, other rounding): faster steps for a
      small model (the sine MLP: ~1.2x meta-steps/s), longer compilation
      for a large one (Conv-4 on Omniglot: ~1.5x the compile time, its
      step time not measured).
    rate_meta_lr: the outer step size of the rates (`base.rate_meta_lr_field`).
  """

  msl_anneal_steps: int | None = fields.field(
      0, check=fields.or_none(fields.non_negative_int),
      allowed='an int >= 0 (0: MSL off) or None (uniform weights, never '
      'annealed)')
  learn_inner_lr: bool = fields.flag(True)
  first_order_steps: int = fields.integer(0, at_least=0)
  per_step_bn: bool = fields.flag(False)
  per_step_bn_filter: str = fields.field(
      PER_STEP_BN_FILTER, check=fields.regex,
      allowed='a non-empty regular expression searched in parameter paths '
      'like blocks/0/scale/value')
  per_step_bn_stats: bool = fields.flag(False)
  remat_inner_steps: bool = fields.flag(False, changes_training=False)
  unroll_inner_steps: bool = fields.flag(False, changes_training=False)
  rate_meta_lr: float | None = base.rate_meta_lr_field()


@base.TRAIN_STEPS.register('mamlpp', fields=MAMLPPHParams)
def make_mamlpp(hparams: MAMLPPHParams, *, loss_fn: core.LossFn,
                tx: optax.GradientTransformation,
                metric_fn: core.LossFn | None = None) -> base.MetaAlgorithm:
  """MAML++ (see module docstring); `per_step_bn` needs batch norm.

  With `metric_fn` (classification accuracy) the metrics also hold
  ``query_accuracy_before`` and ``query_accuracy_after`` (the last step).

  `per_step_bn_stats` (BNRS) needs a `core.StatefulLoss` whose model state
  holds the statistics. `task_batch_size`: meta-gradient that many tasks
  at a time (`core.over_task_batches`); the same gradient.
  """
  inner_lr, num_inner_steps = hparams.inner_lr, hparams.num_inner_steps
  per_step_bn_stats = hparams.per_step_bn_stats
  first_order_steps = hparams.first_order_steps
  stateful = core.is_stateful(loss_fn)
  if per_step_bn_stats and not stateful:
    raise fields.FieldError(
        'per_step_bn_stats=True: needs a model with batch-norm statistics '
        '(a core.StatefulLoss, e.g. an NNX model with nnx.BatchNorm); this '
        'loss is parameter-only')

  def batch_norm(model_params):
    if not hparams.per_step_bn:
      return None
    return PerStepBatchNorm.from_params(model_params,
                                        hparams.per_step_bn_filter)

  def grad_fn(first_order):
    def objective(params, tasks, model_state, step):
      batch, keys = tasks
      return mamlpp_loss_and_aux(
          loss_fn, params, batch, step=step, num_inner_steps=num_inner_steps,
          msl_anneal_steps=hparams.msl_anneal_steps,
          learn_inner_lr=hparams.learn_inner_lr, first_order=first_order,
          remat=hparams.remat_inner_steps,
          bn=batch_norm(params['model']), metric_fn=metric_fn,
          model_state=model_state, rng=keys,
          per_step_stats=per_step_bn_stats,
          unroll=hparams.unroll_inner_steps)
    return core.over_task_batches(
        jax.value_and_grad(objective, has_aux=True), hparams.task_batch_size)

  first, second = grad_fn(True), grad_fn(False)

  def direction(state: base.MetaTrainState, tasks):
    args = (state.params, tasks, base.model_state_of(state),
            state.step)
    if first_order_steps:
      (_, aux), grads = jax.lax.cond(state.step < first_order_steps, first,
                                     second, *args)
    else:
      (_, aux), grads = second(*args)
    return grads, aux, {}

  train_step = base.meta_update_step(direction, tx, stateful=stateful)

  def inner_loop(loss, loss_at=None):
    def init(meta_params):
      bn = batch_norm(meta_params['model'])
      if bn is None:
        return meta_params['model']
      return bn.put(meta_params['model'],
                    bn.at(meta_params['per_step_bn'], 0, num_inner_steps))

    def step(meta_params, p, support, k):
      bn = batch_norm(meta_params['model'])
      bn_leaves = None if bn is None else bn.at(meta_params['per_step_bn'],
                                                k, num_inner_steps)
      step_loss = loss if loss_at is None else loss_at(loss, k, support=True)
      return inner_step(step_loss, p, support,
                        rates=rates_at(meta_params['inner_lr'], k,
                                       num_inner_steps),
                        bn=bn, bn_leaves=bn_leaves)

    return core.InnerLoop(
        init=init, step=step, params=lambda p: p,
        loss_at=None if loss_at is None else (
            lambda fn, k: loss_at(fn, k, support=False)))

  def per_step_inner_loop(loss, model_state):
    """BNRS evaluation: step k's support forward reads copy k, the query
    after k steps copy k - 1 (copy 0 before adapting)."""
    def loss_at(fn, k, support):
      k = k if support else jnp.maximum(k - 1, 0)
      return core.bind_state(fn, at_step(model_state, k, num_inner_steps))
    return inner_loop(loss, loss_at)

  def init_params(model_params):
    return mamlpp_params(model_params, inner_lr=inner_lr,
                         num_inner_steps=num_inner_steps,
                         per_step_bn=batch_norm(model_params))

  def init_model_state(model_state):
    if not per_step_bn_stats:
      return model_state
    # One independent array per leaf: copy k is row k, never shared.
    return jax.tree.map(
        lambda s: jnp.repeat(s[None], num_inner_steps, axis=0), model_state)

  return base.MetaAlgorithm(
      train_step=train_step, inner_loop_for=inner_loop,
      model_params=base.model_of,
      init_params=init_params, loss_fn=loss_fn,
      stateful_inner_loop=per_step_inner_loop if per_step_bn_stats else None,
      init_model_state=init_model_state)
