"""Meta-training loop in the Flax-examples shape: `train_and_evaluate`.

Usage::

  from configs import maml_sine
  state = train_and_evaluate(maml_sine.get_config('quick'), '/tmp/maml_sine')

The order is the Flax examples' own: writer, tasks, model, state, restore,
jit, periodic actions, loop, final evaluation, return the final state. All
I/O of training lives here and in `maml_plugin.actions`.

Speed: `steps_per_call` meta-steps are fused into one jitted `lax.scan`, with
the meta-batches sampled on device inside it; periodic actions fire on call
boundaries, which `config_validation` keeps aligned with their intervals.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
from typing import Any, Callable

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from maml_plugin import actions
from maml_plugin import checkpointing
from maml_plugin import config_validation
from maml_plugin import core
from maml_plugin import evaluation
from maml_plugin import plots
from maml_plugin import train_steps
from maml_plugin.models import Conv4
from maml_plugin.models import MLP
from maml_plugin.tasks import EpisodicTasks
from maml_plugin.tasks import SinusoidTasks
from maml_plugin.tasks import omniglot


@dataclasses.dataclass(frozen=True)
class Problem:
  """What the loop needs to know about a task family and its model.

  Attributes:
    tasks: sampler with `train_batch(rng, num_tasks)` and `held_out(...)`.
    graphdef: the model's static structure (from `nnx.split`).
    init_params: the model's parameters at initialization.
    predict_fn: ``predict_fn(params, x) -> y``.
    loss_fn: the task loss ``loss_fn(params, batch) -> scalar``.
    metric: name of the evaluation metric ('mse' or 'accuracy').
    metric_fn: ``metric_fn(params, batch) -> scalar`` reported beside the
      loss in training and used by evaluation; None means the loss itself.
    eval_tasks: sampler of the held-out tasks; None means `tasks`.
    eval_task_batch_size: tasks evaluated at once (None: all of them).
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


def create_problem(config: ml_collections.ConfigDict) -> Problem:
  """Tasks, model (split once into graphdef + params) and loss."""
  if config.task == 'omniglot':
    return create_omniglot_problem(config)
  if config.task != 'sinusoid':
    raise config_validation.ConfigError(
        f'config.task={config.task!r}: must be one of '
        + ', '.join(repr(t) for t in config_validation.TASKS))
  tasks = SinusoidTasks(num_support=config.num_support,
                        num_query=config.num_query)
  model = MLP(1, tuple(config.hidden_sizes), 1,
              rngs=nnx.Rngs(params=config.seed))
  graphdef, params = nnx.split(model, nnx.Param)

  def predict_fn(params, x):
    return nnx.merge(graphdef, params)(x)

  def loss_fn(params, batch):
    return jnp.mean(jnp.square(predict_fn(params, batch['x']) - batch['y']))

  return Problem(tasks=tasks, graphdef=graphdef, init_params=params,
                 predict_fn=predict_fn, loss_fn=loss_fn, metric='mse')


def create_omniglot_problem(config: ml_collections.ConfigDict) -> Problem:
  """N-way K-shot Omniglot: episodic tasks, Conv-4, cross-entropy, accuracy."""
  def sampler(split, num_query):
    data = omniglot.load_split(split, data_dir=config.data_dir)
    return EpisodicTasks.from_arrays(
        data.images, data.labels, ways=config.ways,
        num_support=config.num_support, num_query=num_query)

  tasks = sampler(config.train_split, config.num_query)
  eval_tasks = (tasks if config.eval_split == config.train_split
                else sampler(config.eval_split, config.eval_num_query))
  model = Conv4(config.ways, num_filters=config.num_filters,
                downsample=config.conv_downsample,
                rngs=nnx.Rngs(params=config.seed))
  graphdef, params = nnx.split(model, nnx.Param)

  def predict_fn(params, x):
    return nnx.merge(graphdef, params)(x)

  def loss_fn(params, batch):
    return optax.softmax_cross_entropy_with_integer_labels(
        predict_fn(params, batch['x']), batch['y']).mean()

  def accuracy_fn(params, batch):
    logits = predict_fn(params, batch['x'])
    return jnp.mean(jnp.argmax(logits, -1) == batch['y'])

  return Problem(tasks=tasks, graphdef=graphdef, init_params=params,
                 predict_fn=predict_fn, loss_fn=loss_fn, metric='accuracy',
                 metric_fn=accuracy_fn, eval_tasks=eval_tasks,
                 eval_task_batch_size=config.eval_task_batch_size)


def create_optimizer(config) -> optax.GradientTransformation:
  return optax.adam(config.meta_lr)


def create_train_step(config, problem: Problem,
                      tx: optax.GradientTransformation):
  """The registered train step `config.train_step`, its hparams from config."""
  hparams = {name: config[name]
             for name in train_steps.hparam_names(config.train_step)
             if name in config}
  if (problem.metric_fn is not None
      and train_steps.accepts_metric_fn(config.train_step)):
    hparams['metric_fn'] = problem.metric_fn
  return train_steps.make_train_step(config.train_step,
                                     loss_fn=problem.loss_fn, tx=tx, **hparams)


def make_train_chunk(train_step, tasks, *, meta_batch_size: int,
                     steps_per_call: int):
  """`steps_per_call` meta-steps as one pure function (jit it).

  ``train_chunk(state, rng) -> (state, metrics)``: step ``s`` uses the key
  ``fold_in(rng, s)``, split into the meta-batch key and the step key, so the
  tasks depend only on the seed and the step, never on the chunking.
  """
  def train_chunk(state, rng):
    # The metrics' type (regression or classification) from the step itself.
    _, metrics_shape = jax.eval_shape(
        lambda s, r: train_step(s, tasks.train_batch(r, meta_batch_size), r),
        state, rng)
    metrics_cls = type(metrics_shape)

    def body(carry, _):
      state, metrics = carry
      step_rng = jax.random.fold_in(rng, state.step)
      batch_rng, step_rng = jax.random.split(step_rng)
      batch = tasks.train_batch(batch_rng, meta_batch_size)
      state, step_metrics = train_step(state, batch, step_rng)
      return (state, metrics.merge(step_metrics)), None

    (state, metrics), _ = jax.lax.scan(
        body, (state, metrics_cls.empty()), None, length=steps_per_call)
    return state, metrics

  return train_chunk


def create_evaluator(config, problem: Problem, held_out=None
                     ) -> evaluation.FewShotEvaluator:
  if held_out is None:
    source = (problem.tasks if problem.eval_tasks is None
              else problem.eval_tasks)
    held_out = source.held_out(seed=config.eval_seed,
                                      num_tasks=config.num_eval_tasks,
                                      num_query=config.eval_num_query)
  return evaluation.FewShotEvaluator(
      problem.loss_fn, held_out, inner_lr=config.inner_lr,
      max_steps=config.eval_num_inner_steps, metric=problem.metric,
      metric_fn=problem.metric_fn,
      task_batch_size=problem.eval_task_batch_size)


def evaluate_and_report(config, problem: Problem, params, train_step: int,
                        workdir: str, evaluator=None) -> dict:
  """Held-out evaluation: writes evaluation.json and adaptation.png."""
  evaluator = evaluator or create_evaluator(config, problem)
  curves = evaluator(params)
  report = actions.evaluation_report(problem.metric, curves, train_step)
  actions.write_evaluation_report(workdir, report)
  if config.task == 'sinusoid' and config.num_plot_tasks > 0:
    steps = sorted({0, min(1, config.eval_num_inner_steps),
                    config.eval_num_inner_steps})
    panels = evaluation.sinusoid_fits(
        problem.predict_fn, problem.loss_fn, params, evaluator.tasks,
        inner_lr=config.inner_lr, inner_steps=tuple(steps),
        num_tasks=min(config.num_plot_tasks, evaluator.num_tasks))
    plots.save_sinusoid_adaptation(
        os.path.join(workdir, 'adaptation.png'), panels,
        inner_steps=tuple(steps))
  return report


class _DropLibraryInfo(std_logging.Filter):
  """Drops INFO records of chatty libraries (orbax logs every file it writes)."""

  def filter(self, record):
    return record.levelno > std_logging.INFO or '/orbax/' not in record.pathname


def quiet_library_logs() -> None:
  """Keeps the log readable: our lines and CLU's, not orbax's internals."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())


def _hparams_for_writer(config) -> dict:
  return {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
          for k, v in config.to_dict().items()}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> train_steps.MetaTrainState:
  """Meta-trains on `config`, checkpoints in `workdir`, evaluates at the end.

  Resumes from the latest checkpoint in `workdir` if there is one.

  Returns:
    The final `MetaTrainState`.
  """
  config_validation.validate(config)
  os.makedirs(workdir, exist_ok=True)

  # Writer.
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams(_hparams_for_writer(config))

  # Tasks and model.
  problem = create_problem(config)

  # State.
  tx = create_optimizer(config)
  state = train_steps.MetaTrainState.create(problem.init_params, tx)
  rng = jax.random.key(config.seed)

  # Restore.
  manager = checkpointing.create_manager(
      workdir, max_to_keep=config.max_checkpoints_to_keep)
  state, rng = checkpointing.restore_latest(manager, state, rng)
  first_step = int(state.step)
  if first_step:
    logging.info('Resumed from checkpoint at step %d.', first_step)

  # Jit.
  train_step = create_train_step(config, problem, tx)
  train_chunk = jax.jit(
      make_train_chunk(train_step, problem.tasks,
                       meta_batch_size=config.meta_batch_size,
                       steps_per_call=config.steps_per_call),
      donate_argnums=0)

  # Periodic actions.
  def state_fn():
    return state

  evaluator = create_evaluator(config, problem)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writer,
      every_steps=config.log_every_steps)
  hooks = [
      report_progress,
      actions.FewShotEvaluation(evaluator=evaluator, writer=writer,
                                state_fn=state_fn,
                                every_steps=config.eval_every_steps),
      actions.Checkpoint(manager=manager, state_fn=state_fn, rng=rng,
                         every_steps=config.checkpoint_every_steps,
                         on_steps=[config.num_train_steps]),
  ]

  # Loop.
  logging.info('Meta-training from step %d to %d.', first_step,
               config.num_train_steps)
  step = first_step
  train_metrics = None
  while step < config.num_train_steps:
    state, chunk_metrics = train_chunk(state, rng)
    train_metrics = (chunk_metrics if train_metrics is None
                     else train_metrics.merge(chunk_metrics))
    previous, step = step, step + config.steps_per_call
    if step % config.log_every_steps == 0:
      writer.write_scalars(step, {f'train/{k}': v for k, v in
                                  train_metrics.compute().items()})
      train_metrics = None
    for s in range(previous + 1, step + 1):
      for hook in hooks:
        hook(s)

  # Final evaluation on the held-out tasks.
  with report_progress.timed('final_eval'):
    report = evaluate_and_report(config, problem, state.params, int(state.step),
                                 workdir, evaluator=evaluator)
  logging.info('Evaluation:\n%s', actions.format_table(report))
  writer.flush()
  manager.close()
  return state
