"""Building the parts of a meta-training run from a config: `build_components`.

Usage::

  from maml_plugin import components
  parts = components.build_components(config)
  state, train_step = parts.state, jax.jit(parts.train_step)

The row of Flax-examples `create_*` functions the trainer
(`maml_plugin.train`) and a loop of your own (docs/own_loop.md) build from:
`create_problem` (the registered task family `config.task` and model
`config.model`), `create_optimizer`, `create_algorithm` (the registered
`config.train_step`), `create_train_state`, `create_evaluator`, and
`build_components`, which validates the config and calls them all. No file
is written and nothing loops here: the loop is `maml_plugin.train`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from clu import metric_writers
from clu import periodic_actions
import jax
import ml_collections
import optax
from flax import nnx

from maml_plugin import actions
from maml_plugin import algorithms
from maml_plugin import checkpointing
from maml_plugin import config_validation
from maml_plugin import core
from maml_plugin import distributed
from maml_plugin import evaluation
from maml_plugin import fields
from maml_plugin import models
from maml_plugin import nnx_bridge
from maml_plugin import tasks as tasks_lib


@dataclasses.dataclass(frozen=True)
class Problem:
  """What the loop needs to know about a task family and its model.

  Attributes:
    tasks: sampler with `train_batch(rng, num_tasks)` and `held_out(...)`.
    graphdef: the model's static structure (from `nnx.split`).
    init_params: the model's parameters at initialization.
    predict_fn: ``predict_fn(params, x, model_state=None) -> y``, the model
      in evaluation mode.
    loss_fn: the task loss ``loss_fn(params, batch) -> scalar`` (a
      `core.StatefulLoss` for a model with state).
    metric: name of the evaluation metric ('mse', 'accuracy', ...).
    metric_fn: ``metric_fn(params, batch) -> scalar`` reported beside the
      loss in training and used by evaluation; None means the loss itself.
    eval_tasks: sampler of the held-out tasks; None means `tasks`.
    eval_task_batch_size: tasks evaluated at once (None: all of them).
    model_state: the model's state besides its params (`core.StatefulLoss`
      models, e.g. `nnx_bridge.NNXModel.model_state`); None for none.
    eval_loss_fn: the loss evaluation adapts with (dropout off, batch norm
      as configured); None means `loss_fn`.
    eval_metric_fn: the metric evaluation reports; None: `metric_fn`.
    picture: the task family's figure for the report
      (`tasks.base.Picture`), or None.
    model: the model, split (`nnx_bridge.NNXModel`).
  """

  tasks: Any
  graphdef: Any
  init_params: Any
  predict_fn: Callable
  loss_fn: core.LossFn
  metric: str
  metric_fn: core.LossFn | None = None
  eval_tasks: Any = None
  eval_task_batch_size: int | None = None
  model_state: Any = None
  eval_loss_fn: Any = None
  eval_metric_fn: Any = None
  picture: Any = None
  model: Any = None


def create_problem(config: ml_collections.ConfigDict) -> Problem:
  """The registered task family `config.task` and model `config.model`.

  The family gives the tasks, the loss and metric on a merged model and
  the data's shape; the model is built for that shape from its config
  fields and split once (`nnx_bridge.NNXModel`): its parameters, its state
  (BatchNorm running averages, ...) and RNG streams (Dropout).
  """
  config_validation.import_modules(config)
  try:
    task = tasks_lib.make_task_problem(config.task, config)
    module = models.make_model(
        config.model, config, input_shape=task.input_shape,
        num_outputs=task.num_outputs, rngs=nnx.Rngs(config.seed))
  except fields.FieldError as e:  # Sizes the data cannot supply, ...
    raise config_validation.config_error(e, config) from None
  try:
    model = nnx_bridge.NNXModel(module)
  except ValueError as e:  # A variable the core cannot carry.
    raise config_validation.ConfigError(
        f'config.model={config.model!r}: {e}') from None

  def predict_fn(params, x, model_state=None):
    return model.merge(params, model_state, deterministic=True,
                       use_running_average=False)(x)

  def measures(fn):
    if fn is None:
      return None, None
    return model.task_loss(fn), model.eval_loss(fn)

  loss_fn, eval_loss_fn = measures(task.loss)
  metric_fn, eval_metric_fn = measures(task.metric_fn)
  return Problem(
      tasks=task.tasks, graphdef=model.graphdef, init_params=model.params,
      predict_fn=predict_fn, loss_fn=loss_fn, metric=task.metric,
      metric_fn=metric_fn, eval_tasks=task.eval_tasks,
      eval_task_batch_size=config.get('eval_task_batch_size'),
      model_state=model.model_state, eval_loss_fn=eval_loss_fn,
      eval_metric_fn=eval_metric_fn, picture=task.picture, model=model)


def meta_lr_schedule(config, lr: float | None = None) -> optax.Schedule:
  """`lr` (default `config.meta_lr`) annealed as `config.meta_lr_schedule`.

  'constant' (default), 'linear' (to 0 at `num_train_steps`, Reptile's outer
  step size) or 'cosine' (to 0 at `num_train_steps`, MAML++).
  """
  lr = config.meta_lr if lr is None else lr
  kind = config.get('meta_lr_schedule', 'constant')
  if kind == 'constant':
    return optax.constant_schedule(lr)
  if kind == 'linear':
    return optax.linear_schedule(lr, 0.0, config.num_train_steps)
  if kind == 'cosine':
    return optax.cosine_decay_schedule(lr, config.num_train_steps)
  raise config_validation.ConfigError(
      f"config.meta_lr_schedule={kind!r}: must be one of 'constant', "
      "'linear', 'cosine'")


def _rate_labels(params):
  """'rates' for learned inner rates (``params['inner_lr']``), else 'model'."""
  if algorithms.holds_inner_rates(params):
    return {name: jax.tree.map(
        lambda _, n=name: 'rates' if n == 'inner_lr' else 'model', sub)
            for name, sub in params.items()}
  return jax.tree.map(lambda _: 'model', params)


def create_optimizer(config) -> optax.GradientTransformation:
  """The outer optimizer: `config.meta_optimizer` ('adam' default, 'sgd').

  Learned inner rates (Meta-SGD, MAML++'s LSLR: ``params['inner_lr']``) get
  their own step size `config.rate_meta_lr` when it is set, on the same
  schedule: Adam moves every entry by about its learning rate per step,
  which is large for rates of ~0.01. With `config.max_meta_grad_norm` the
  meta-gradient's global norm is clipped to it first (all leaves together,
  rates included), so no single meta-batch moves the optimizer's moments
  by more than a gradient of that norm would.
  """
  name = config.get('meta_optimizer', 'adam')
  if name not in ('adam', 'sgd'):
    raise config_validation.ConfigError(
        f"config.meta_optimizer={name!r}: must be one of 'adam', 'sgd'")
  make = getattr(optax, name)
  if config.get('rate_meta_lr') is None:
    tx = make(meta_lr_schedule(config))
  else:
    tx = optax.multi_transform(
        {'model': make(meta_lr_schedule(config)),
         'rates': make(meta_lr_schedule(config, config.rate_meta_lr))},
        _rate_labels)
  max_norm = config.get('max_meta_grad_norm')
  if max_norm is None:
    return tx
  return optax.chain(optax.clip_by_global_norm(max_norm), tx)


def create_algorithm(config, problem: Problem,
                     tx: optax.GradientTransformation
                     ) -> algorithms.MetaAlgorithm:
  """The registered algorithm `config.train_step`, its hparams from config
  (the fields its `algorithms.HParams` declares)."""
  hparams = {name: config[name]
             for name in algorithms.hparam_names(config.train_step)
             if name in config}
  if (problem.metric_fn is not None
      and algorithms.accepts_metric_fn(config.train_step)):
    hparams['metric_fn'] = problem.metric_fn
  try:
    return algorithms.make_algorithm(config.train_step,
                                     loss_fn=problem.loss_fn, tx=tx,
                                     **hparams)
  except fields.FieldError as e:
    raise config_validation.config_error(e, config) from None


def create_train_step(config, problem: Problem,
                      tx: optax.GradientTransformation):
  """The registered train step `config.train_step`, its hparams from config."""
  return create_algorithm(config, problem, tx).train_step


def create_train_state(problem: Problem, algorithm: algorithms.MetaAlgorithm,
                       tx: optax.GradientTransformation, config=None
                       ) -> algorithms.MetaTrainState:
  """Step 0: the algorithm's params (model, and learned rates if any).

  A value that does not fit the model (ANIL's ``head_filter`` selecting
  no leaf, ...) is a `config_validation.ConfigError`; with `config`, the
  fields it names read ``config.<field>``."""
  try:
    params = algorithm.init_params(problem.init_params)
    model_state = (None if problem.model_state is None else
                   algorithm.init_model_state(problem.model_state))
  except ValueError as e:  # A config value that does not fit the model.
    if config is None:
      raise config_validation.ConfigError(str(e)) from None
    raise config_validation.config_error(e, config) from None
  return algorithms.MetaTrainState.create(params, tx, model_state)


def create_evaluator(config, problem: Problem, held_out=None,
                     algorithm: algorithms.MetaAlgorithm | None = None
                     ) -> evaluation.FewShotEvaluator:
  """Evaluation on the held-out tasks with the algorithm's own inner loop."""
  if held_out is None:
    source = (problem.tasks if problem.eval_tasks is None
              else problem.eval_tasks)
    held_out = source.held_out(seed=config.eval_seed,
                                      num_tasks=config.num_eval_tasks,
                                      num_query=config.eval_num_query)
  if algorithm is None:
    algorithm = create_algorithm(config, problem, create_optimizer(config))
  loss_fn = problem.eval_loss_fn or problem.loss_fn
  metric_fn = problem.eval_metric_fn or problem.metric_fn
  return evaluation.FewShotEvaluator(
      loss_fn, held_out, num_inner_steps=config.eval_num_inner_steps,
      metric=problem.metric, metric_fn=metric_fn,
      inner_loop_for=algorithm.eval_inner_loop,
      task_batch_size=problem.eval_task_batch_size)


@dataclasses.dataclass(frozen=True)
class Components:
  """What a config gives a training loop (`build_components`).

  Attributes:
    state: the train state at step 0 (`algorithms.MetaTrainState`).
    train_step: ``train_step(state, batch, rng) -> (state, metrics)``,
      pure: jit it; ``metrics.compute()`` is a dict of scalars.
    evaluator: few-shot evaluation on the config's held-out tasks,
      ``evaluator(params, model_state) -> curves`` (`evaluation.FewShotEvaluator`).
    problem: the task family and model (`Problem`).
    algorithm: the registered algorithm (`algorithms.MetaAlgorithm`).
    config: the config they were built from.
  """

  state: algorithms.MetaTrainState
  train_step: Callable
  evaluator: evaluation.FewShotEvaluator
  problem: Problem
  algorithm: algorithms.MetaAlgorithm
  config: ml_collections.ConfigDict

  def meta_batch(self, rng: jax.Array) -> dict:
    """The `config.meta_batch_size` training tasks of one step's key
    (pure, jittable)."""
    return self.problem.tasks.train_batch(rng, self.config.meta_batch_size)

  def periodic_actions(self, writer: metric_writers.MetricWriter,
                       workdir: str, *, state_fn: Callable[[], Any],
                       rng: jax.Array, manager=None
                       ) -> list[periodic_actions.PeriodicAction]:
    """Our CLU actions for a loop that calls each with the step just done:
    few-shot evaluation every `config.eval_every_steps` and at
    `config.num_train_steps` (scalars to `writer`) and a checkpoint of
    ``state_fn()`` and `rng` (a key, or a function returning the current
    one) in ``workdir/checkpoints`` every `config.checkpoint_every_steps`
    and at `config.num_train_steps`. `manager`: an orbax manager of your
    own (default: one for `workdir`)."""
    config = self.config
    if manager is None:
      manager = checkpointing.create_manager(
          workdir, max_to_keep=config.max_checkpoints_to_keep)
    return [
        actions.FewShotEvaluation(evaluator=self.evaluator, writer=writer,
                                  state_fn=state_fn,
                                  every_steps=config.eval_every_steps,
                                  on_steps=[config.num_train_steps]),
        actions.Checkpoint(manager=manager, state_fn=state_fn, rng=rng,
                           every_steps=config.checkpoint_every_steps,
                           on_steps=[config.num_train_steps]),
    ]


def build_components(config: ml_collections.ConfigDict) -> Components:
  """Everything a Flax-examples `train_and_evaluate` needs, from a config.

  For a loop of your own (docs/own_loop.md)::

    components = maml_plugin.build_components(config)
    state = components.state
    p_train_step = jax.jit(components.train_step)
    hooks = components.periodic_actions(writer, workdir,
                                        state_fn=lambda: state, rng=rng)
    for step in range(1, config.num_train_steps + 1):
      batch_rng, step_rng = jax.random.split(jax.random.fold_in(rng, step))
      state, metrics = p_train_step(state, components.meta_batch(batch_rng),
                                    step_rng)
      for hook in hooks:
        hook(step)

  Validates the config (importing ``config.imports``) and builds the task
  family, model, algorithm, optimizer, initial state and evaluator; no
  file is written.
  """
  config_validation.validate(config,
                             num_devices=distributed.num_task_devices())
  problem = create_problem(config)
  tx = create_optimizer(config)
  algorithm = create_algorithm(config, problem, tx)
  return Components(
      state=create_train_state(problem, algorithm, tx, config),
      train_step=algorithm.train_step,
      evaluator=create_evaluator(config, problem, algorithm=algorithm),
      problem=problem, algorithm=algorithm, config=config)
