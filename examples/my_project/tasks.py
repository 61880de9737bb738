"""A task family of your own, ``config.task = 'line_tasks'``: regress lines
``y = slope * x + offset``, a new slope and offset per task.

A task family is three things, registered together:

- a task source with ``train_batch(rng, num_tasks)`` (jittable: the
  trainer samples inside its jitted steps) and ``held_out(seed, num_tasks,
  num_query)`` (fixed evaluation tasks), each returning a meta-batch
  ``{'support': {'x', 'y'}, 'query': {'x', 'y'}}`` with leaves
  ``[tasks, examples, ...]`` (`maml_plugin.tasks.TaskSource`);
- its config fields, a frozen `maml_plugin.fields.Fields` dataclass: each
  field checked, unknown ones refused;
- a factory registered in `maml_plugin.tasks.TASKS` that returns a
  `TaskProblem`: the sources, the shape of one input, the number of
  outputs, the loss ``loss(model, batch)`` on the merged NNX module and
  the metric evaluation reports (optionally ``metric_fn`` and a
  ``picture`` for the report).
"""

import dataclasses

import jax

from maml_plugin import fields
from maml_plugin import losses
from maml_plugin.tasks import TASKS
from maml_plugin.tasks import TaskProblem


@dataclasses.dataclass(frozen=True)
class LineTasks:
  """Lines with slopes in ``[-max_slope, max_slope]``, inputs in [-3, 3]."""

  num_support: int
  num_query: int
  max_slope: float

  def sample(self, rng, num_tasks, num_query):
    k_slope, k_offset, k_x = jax.random.split(rng, 3)
    slope = jax.random.uniform(k_slope, (num_tasks, 1, 1),
                               minval=-self.max_slope, maxval=self.max_slope)
    offset = jax.random.uniform(k_offset, (num_tasks, 1, 1), minval=-1.0)
    x = jax.random.uniform(k_x, (num_tasks, self.num_support + num_query, 1),
                           minval=-3.0, maxval=3.0)
    y = slope * x + offset
    k = self.num_support
    return {'support': {'x': x[:, :k], 'y': y[:, :k]},
            'query': {'x': x[:, k:], 'y': y[:, k:]}}

  def train_batch(self, rng, num_tasks):
    return self.sample(jax.random.fold_in(rng, 0), num_tasks, self.num_query)

  def held_out(self, seed, num_tasks, num_query):
    rng = jax.random.fold_in(jax.random.key(seed), 1)
    return self.sample(rng, num_tasks, num_query)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LineFields(fields.Fields):
  num_support: int = fields.integer()
  num_query: int = fields.integer()
  max_slope: float = fields.positive(2.0)


def mse(model, batch):
  return losses.mse(model(batch['x']), batch['y'])


@TASKS.register('line_tasks', fields=LineFields)
def make_line_tasks(task_fields: LineFields) -> TaskProblem:
  return TaskProblem(
      tasks=LineTasks(task_fields.num_support, task_fields.num_query,
                      task_fields.max_slope),
      input_shape=(1,), num_outputs=1, loss=mse, metric='mse')
