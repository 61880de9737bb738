"""Sinusoid regression (Finn et al. 2017, sec. 5.1), registered as 'sinusoid'.

A task is ``y = A * sin(x - phase)`` with ``A ~ U[0.1, 5]``,
``phase ~ U[0, pi]`` and inputs ``x ~ U[-5, 5]``; support and query points are
drawn independently. Sampling is pure `jax.random`, so it runs inside a jitted
train step with no host round trip::

  sampler = SinusoidTasks(num_support=10, num_query=10)
  meta_batch = sampler.sample(rng, num_tasks=25)      # jittable
  eval_tasks = sampler.held_out(seed=0, num_tasks=600, num_query=100)

From a config (``config.task = 'sinusoid'``): `SinusoidFields` are its
fields; the loss is the MSE and the report gets the MAML paper's figure of
fitted sinusoids (`adaptation_picture`). The smallest task family here:
copy it to add one.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from maml_plugin import fields
from maml_plugin import losses
from maml_plugin.tasks import base

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)

# Training tasks come from `fold_in(key, _TRAIN_STREAM)`, held-out ones from
# `fold_in(key, _HELD_OUT_STREAM)`: the two streams never share a key.
_TRAIN_STREAM = 0
_HELD_OUT_STREAM = 1


def sinusoid(x: jax.Array, amplitude: jax.Array, phase: jax.Array) -> jax.Array:
  return amplitude * jnp.sin(x - phase)


@dataclasses.dataclass(frozen=True)
class SinusoidTasks:
  """In-process sampler of sinusoid meta-batches (their form: see
  `maml_plugin.checks`).

  Attributes:
    num_support: K, support points per task.
    num_query: query points per task (training).
  """

  num_support: int = 10
  num_query: int = 10

  def sample_params(self, rng: jax.Array, num_tasks: int):
    """Amplitudes and phases of `num_tasks` tasks, each shaped [num_tasks]."""
    k_amp, k_phase = jax.random.split(rng)
    amplitude = jax.random.uniform(k_amp, (num_tasks,), minval=AMPLITUDE_RANGE[0],
                                   maxval=AMPLITUDE_RANGE[1])
    phase = jax.random.uniform(k_phase, (num_tasks,), minval=PHASE_RANGE[0],
                               maxval=PHASE_RANGE[1])
    return amplitude, phase

  def sample(self, rng: jax.Array, num_tasks: int, *,
             num_query: int | None = None) -> dict:
    """A meta-batch ``{'support': {'x','y'}, 'query': {'x','y'}}``.

    Leaves are float32 ``[num_tasks, shots, 1]``; the meta-batch also carries
    ``'amplitude'`` and ``'phase'`` ``[num_tasks]`` for plots and checks.
    """
    num_query = self.num_query if num_query is None else num_query
    k_task, k_x = jax.random.split(rng)
    amplitude, phase = self.sample_params(k_task, num_tasks)
    x = jax.random.uniform(k_x, (num_tasks, self.num_support + num_query, 1),
                           minval=INPUT_RANGE[0], maxval=INPUT_RANGE[1])
    y = sinusoid(x, amplitude[:, None, None], phase[:, None, None])
    k = self.num_support
    return {
        'support': {'x': x[:, :k], 'y': y[:, :k]},
        'query': {'x': x[:, k:], 'y': y[:, k:]},
        'amplitude': amplitude,
        'phase': phase,
    }

  def train_batch(self, rng: jax.Array, num_tasks: int) -> dict:
    """Training meta-batch for the key of one step (training stream)."""
    return self.sample(jax.random.fold_in(rng, _TRAIN_STREAM), num_tasks)

  def held_out(self, seed: int, num_tasks: int = 600,
               num_query: int = 100) -> dict:
    """A fixed, seeded set of evaluation tasks, disjoint from training keys."""
    rng = jax.random.fold_in(jax.random.key(seed), _HELD_OUT_STREAM)
    return self.sample(rng, num_tasks, num_query=num_query)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SinusoidFields(fields.Fields):
  """The sinusoid family's config fields.

  Attributes:
    num_support: K, support points per task.
    num_query: query points per training task.
    num_plot_tasks: held-out tasks drawn in ``adaptation.png`` (0: none).
  """

  num_support: int = fields.integer()
  num_query: int = fields.integer()
  num_plot_tasks: int = fields.integer(3, at_least=0, changes_training=False)


def mse_loss(model, batch) -> jax.Array:
  """The task loss on a merged model: MSE of its predictions."""
  return losses.mse(model(batch['x']), batch['y'])


def sinusoid_fits(predict_fn, loss_fn, params, tasks, *,
                  inner_lr=None, inner_steps=(0, 1, 10), num_tasks: int = 3,
                  grid_size: int = 200,
                  inner_loop=None) -> list[dict]:
  """Predictions on a grid for the first `num_tasks` sinusoid tasks.

  `predict_fn(params, x) -> y`. Returns the panels `save_adaptation_figure`
  draws.
  """
  # Evaluation sits above the task sources: imported when a report is drawn.
  from maml_plugin import evaluation  # pylint: disable=g-import-not-at-top
  x = jnp.linspace(*INPUT_RANGE, grid_size)[:, None]
  fit = jax.jit(lambda p, support: [
      predict_fn(q, x) for q in evaluation.adapted_params_at(
          loss_fn, p, support, inner_lr=inner_lr, steps=tuple(inner_steps),
          inner_loop=inner_loop)])
  panels = []
  for i in range(num_tasks):
    support = jax.tree.map(lambda a: a[i], tasks['support'])
    amp, phase = float(tasks['amplitude'][i]), float(tasks['phase'][i])
    preds = fit(params, support)
    panels.append({
        'x': np.asarray(x[:, 0]),
        'y_true': np.asarray(sinusoid(x[:, 0], amp, phase)),
        'support_x': np.asarray(support['x'][:, 0]),
        'support_y': np.asarray(support['y'][:, 0]),
        'predictions': [np.asarray(p[:, 0]) for p in preds],
        'title': f'held-out task {i}: A={amp:.2f}, phase={phase:.2f}',
    })
  return panels


def adaptation_picture(path: str, *, predict_fn, params, tasks, inner_loop,
                       num_inner_steps: int, num_tasks: int) -> None:
  """The MAML paper's figure (a `base.Picture`): for the first `num_tasks`
  held-out tasks, the true curve, the support points and the prediction
  before adapting and after 1 and `num_inner_steps` inner steps."""
  steps = tuple(sorted({0, min(1, num_inner_steps), num_inner_steps}))
  panels = sinusoid_fits(
      predict_fn, None, params, tasks, inner_loop=inner_loop,
      inner_steps=steps, num_tasks=min(num_tasks, len(tasks['amplitude'])))
  save_adaptation_figure(path, panels, inner_steps=steps)


def save_adaptation_figure(path: str, panels: list[dict], *,
                           inner_steps: tuple[int, ...]) -> None:
  """Writes the figure of `panels` (`sinusoid_fits`) to the PNG `path`,
  atomically: one panel per task, the true curve, the support points and
  the predictions after each of `inner_steps` (the counts of
  ``panels[i]['predictions']``)."""
  # Matplotlib loads only when a figure is drawn, not with the task source.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from maml_plugin import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  n = len(panels)
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
  styles = ['--', '-', '-', '-']
  colors = ['tab:gray', 'tab:orange', 'tab:green', 'tab:purple']
  for ax, panel in zip(axes[0], panels):
    ax.plot(panel['x'], panel['y_true'], color='tab:red', lw=2,
            label='ground truth')
    for i, (k, pred) in enumerate(zip(inner_steps, panel['predictions'])):
      label = 'pre-update' if k == 0 else f'after {k} step{"s" * (k > 1)}'
      ax.plot(panel['x'], pred, styles[i % 4], color=colors[i % 4], lw=1.5,
              label=label)
    ax.scatter(panel['support_x'], panel['support_y'], marker='^', s=40,
               color='black', zorder=5, label='support (K points)')
    ax.set_title(panel['title'], fontsize=9)
    ax.set_xlim(float(np.min(panel['x'])), float(np.max(panel['x'])))
    ax.set_xlabel('x')
  axes[0][0].set_ylabel('y')
  axes[0][-1].legend(fontsize=7, loc='lower right')
  fig.tight_layout()
  try:  # Whole or not at all; the temporary file goes on failure.
    workdir_lib.write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110,
                                                           format='png'))
  finally:
    plt.close(fig)


@base.TASKS.register('sinusoid', fields=SinusoidFields)
def make_sinusoid_problem(task_fields: SinusoidFields) -> base.TaskProblem:
  """Sinusoid regression: 1 input, 1 output, MSE, the fitted-curve figure."""
  picture = None
  if task_fields.num_plot_tasks:
    picture = functools.partial(adaptation_picture,
                                num_tasks=task_fields.num_plot_tasks)
  return base.TaskProblem(
      tasks=SinusoidTasks(num_support=task_fields.num_support,
                          num_query=task_fields.num_query),
      input_shape=(1,), num_outputs=1, loss=mse_loss, metric='mse',
      picture=picture)
