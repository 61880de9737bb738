"""The `TASKS` registry: task families that build a problem from a config.

A task family is one module of this package (copy `sinusoid.py`) that
registers a factory with its config fields; the factory returns a
`TaskProblem`: the task sources, the loss and metric on a merged model, the
shape of the data, and optionally a picture for the report::

  @dataclasses.dataclass(frozen=True, kw_only=True)
  class MyFields(fields.Fields):
    num_support: int = fields.integer()

  @TASKS.register('mine', fields=MyFields)
  def make_mine(task_fields: MyFields) -> TaskProblem:
    return TaskProblem(tasks=MyTasks(task_fields.num_support), input_shape=(1,),
                       num_outputs=1, metric='mse',
                       loss=lambda model, batch: losses.mse(
                           model(batch['x']), batch['y']))

Losses and metrics are ``fn(model, batch) -> scalar`` on the merged NNX
module (`maml_plugin.nnx_bridge.NNXModel.task_loss`), so one family works
with any registered model, BatchNorm and Dropout included. A bad value
that only the data can reveal (more ways than classes) is a
`fields.FieldError` naming the field.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Protocol

import jax

from maml_plugin import fields
from maml_plugin.nnx_bridge import ModuleLoss  # pylint: disable=unused-import
from maml_plugin.registry import Registry

TASKS = Registry('task')



class TaskSource(Protocol):
  """Samples meta-batches (``{'support': {'x', 'y'}, 'query': {...}}``,
  leaves ``[tasks, examples, ...]``; the form `maml_plugin.checks` checks)."""

  def train_batch(self, rng: jax.Array, num_tasks: int) -> dict:
    """The meta-batch of one training step (jittable)."""

  def held_out(self, seed: int, num_tasks: int, num_query: int) -> dict:
    """A fixed set of evaluation tasks, disjoint from training's."""


class Picture(Protocol):
  """Draws the family's figure for the report (e.g. fitted sinusoids).

  `predict_fn(params, x)` is the model in evaluation mode, `inner_loop` the
  algorithm's own (`core.InnerLoop`; `evaluation.adapted_params_at`
  adapts with it), `tasks` the held-out tasks, `num_inner_steps` the most inner
  steps evaluation runs. Writes the PNG `path`.
  """

  def __call__(self, path: str, *, predict_fn, params, tasks, inner_loop,
               num_inner_steps: int) -> None:
    ...


@dataclasses.dataclass(frozen=True)
class TaskProblem:
  """What a task family gives the trainer.

  Attributes:
    tasks: training tasks (a `TaskSource`).
    input_shape: one example's input shape, e.g. ``(1,)`` or
      ``(28, 28, 1)`` (what the model is built for).
    num_outputs: regression targets or classes.
    loss: ``loss(model, batch) -> scalar``, the task loss.
    metric: the name evaluation reports ('mse', 'accuracy', ...).
    metric_fn: ``metric_fn(model, batch) -> scalar`` reported beside the
      loss in training and by evaluation; None means the loss.
    eval_tasks: held-out task source; None means `tasks`.
    picture: a `Picture` for the report, or None.
  """

  tasks: TaskSource
  input_shape: tuple[int, ...]
  num_outputs: int
  loss: ModuleLoss
  metric: str
  metric_fn: ModuleLoss | None = None
  eval_tasks: TaskSource | None = None
  picture: Picture | None = None


def make_task_problem(name: str, config) -> TaskProblem:
  """The registered task family `name`, its fields read from `config`."""
  return TASKS.lookup(name)(TASKS.fields(name).from_config(config))


def build_task_problem(name: str, config) -> TaskProblem:
  """Deprecated: the former name of `make_task_problem` (registry look-ups
  are ``make_*``: `algorithms.make_algorithm`, `models.make_model`)."""
  warnings.warn('tasks.build_task_problem is now tasks.make_task_problem',
                DeprecationWarning, stacklevel=2)
  return make_task_problem(name, config)
