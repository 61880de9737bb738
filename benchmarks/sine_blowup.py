"""What runs away first when a sinusoid meta-training run blows up.

  python -m maml_plugin.main --config=configs/maml_sine.py --workdir=/tmp/s4 \\
      --config.seed=4 --config.max_checkpoints_to_keep=10
  python benchmarks/sine_blowup.py --workdir=/tmp/s4 --seed=4 \\
      --from_step=50000 --to_step=60000 --out=/tmp/s4_50k.csv

Restores the run's checkpoint at `--from_step` (read only: nothing in the
workdir is written) and replays its meta-steps with the trainer's own chunk
of `steps_per_call` steps (`train.make_train_chunk`: the same tasks, keys
and arithmetic, so the replay follows the run), recording for every
meta-step the meta-loss, the un-adapted query loss, the meta-gradient's
global norm, the norm of the update Adam applied, the largest entry of
Adam's second moment and the norm of its first moment; and every
`--probe_every` steps the held-out un-adapted and one-step loss on the
run's first `--probe_tasks` held-out tasks and the sharpness alpha * lambda
(lambda: the top eigenvalue of a task's support-loss Hessian at the
initialization, by power iteration) over the same tasks. Run it with the
run's own `XLA_FLAGS`. Writes a CSV (one row per meta-step, probe columns
empty between probes) and prints the steps where a quantity first exceeds
10x its median over the replay's first 1,000 steps, and whether the replay
reached the run's own checkpoint at `--to_step`.

`--inject_step=N --inject_scale=S` multiplies the targets of meta-step N's
meta-batch by S: one rare meta-batch whose inner steps overshoot, on demand
(the regression case of docs/sinusoid.md: S=10 at step 50,101 of seed 4).
`--plot=LABEL=CSV,LABEL=CSV... --out=PNG` draws replays side by side.
"""

import argparse
import ast
import csv
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import maml_sine  # pylint: disable=g-import-not-at-top
from maml_plugin import checkpointing  # pylint: disable=g-import-not-at-top
from maml_plugin import core  # pylint: disable=g-import-not-at-top
from maml_plugin import train  # pylint: disable=g-import-not-at-top
from maml_plugin import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

import hessian  # pylint: disable=g-import-not-at-top

POWER_ITERATIONS = 20
COLUMNS = ('step', 'meta_loss', 'query_loss_before', 'meta_grad_norm',
           'update_norm', 'adam_nu_max', 'adam_mu_norm')
PROBES = ('heldout_loss_before', 'heldout_loss_step1', 'sharpness_median',
          'sharpness_max', 'sharpness_above_2')


def adam_moments(opt_state):
  """(mu, nu) of the (first) Adam state inside an optax state."""
  for node in jax.tree.leaves(
      opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState)):
    if isinstance(node, optax.ScaleByAdamState):
      return node.mu, node.nu
  raise ValueError('no Adam state in the optimizer state')


def make_replay_chunk(components, config, inject_step=-1, inject_scale=1.0):
  """`steps_per_call` trainer steps in a scan, with the per-step diagnostics
  as the scan's outputs. The meta-batch of meta-step `inject_step` (if any)
  has its targets multiplied by `inject_scale`: one rare, huge meta-batch on
  demand."""
  tasks = components.problem.tasks
  train_step = components.train_step

  def one_step(state, rng):
    # The trainer's step (train.make_train_chunk's body).
    step_rng = jax.random.fold_in(rng, state.step)
    batch_rng, step_rng = jax.random.split(step_rng)
    batch = tasks.train_batch(batch_rng, config.meta_batch_size)
    scale = jnp.where(state.step + 1 == inject_step, inject_scale, 1.0)
    batch = {part: {'x': batch[part]['x'], 'y': batch[part]['y'] * scale}
             for part in ('support', 'query')}
    new_state, metrics = train_step(state, batch, step_rng)
    values = metrics.compute()
    mu, nu = adam_moments(new_state.opt_state)
    update = jax.tree.map(lambda a, b: a - b, new_state.params, state.params)
    row = (new_state.step, values['query_loss_after'],
           values['query_loss_before'], values['meta_grad_norm'],
           optax.global_norm(update),
           jnp.max(jnp.stack([jnp.max(v) for v in jax.tree.leaves(nu)])),
           optax.global_norm(mu))
    return new_state, row

  def replay_chunk(state, rng):
    def body(state, _):
      return one_step(state, rng)
    return jax.lax.scan(body, state, None, length=config.steps_per_call)

  return jax.jit(replay_chunk)


def make_probe(components, config, num_tasks):
  """Held-out losses and sharpness on the first `num_tasks` held-out tasks."""
  loss_fn = components.problem.loss_fn
  held = jax.tree.map(lambda a: a[:num_tasks],
                      components.evaluator.tasks)

  def per_task(params, task):
    before = loss_fn(params, task['query'])
    adapted = core.adapt(loss_fn, params, task['support'],
                         inner_lr=config.inner_lr, num_steps=1)
    return (before, loss_fn(adapted, task['query']),
            config.inner_lr * hessian.top_eigenvalue(
                loss_fn, params, task['support'], POWER_ITERATIONS))

  @jax.jit
  def probe(params):
    if isinstance(params, dict) and 'model' in params:  # MAML++'s layout.
      params = params['model']
    before, after, sharp = jax.vmap(per_task, in_axes=(None, 0))(params, held)
    return (jnp.mean(before), jnp.mean(after), jnp.median(sharp),
            jnp.max(sharp), jnp.sum(sharp > 2))

  return probe


def plot(specs: str, out: str) -> None:
  """The held-out losses, Adam's largest second moment and the update
  norm of replays ``LABEL=CSV,...``, one line each."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
  for spec in specs.split(','):
    label, path = spec.rsplit('=', 1)
    with open(path) as f:
      rows = list(csv.DictReader(f))
    probed = [r for r in rows if r['step_probed']]
    x = [int(r['step_probed']) for r in probed]
    axes[0].plot(x, [float(r['heldout_loss_before']) for r in probed], 'o-',
                 label=label)
    axes[1].plot(x, [float(r['heldout_loss_step1']) for r in probed], 'o-',
                 label=label)
    steps = [int(r['step']) for r in rows]
    axes[2].semilogy(steps, [float(r['adam_nu_max']) for r in rows],
                     label=label)
    axes[3].semilogy(steps, [float(r['update_norm']) for r in rows],
                     label=label, lw=0.5)
  titles = ('held-out MSE before adapting', 'held-out MSE after 1 step',
            "Adam's largest second moment", 'norm of the update applied')
  for ax, title in zip(axes, titles):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('meta-step')
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--plot', default=None,
                      help='LABEL=CSV,... of earlier replays: draw to --out')
  parser.add_argument('--workdir')
  parser.add_argument('--config_arg', default=None)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--from_step', type=int, default=0)
  parser.add_argument('--to_step', type=int, default=10_000)
  parser.add_argument('--probe_every', type=int, default=500)
  parser.add_argument('--probe_tasks', type=int, default=100)
  parser.add_argument('--out', required=True)
  parser.add_argument('--inject_step', type=int, default=-1,
                      help='the meta-step whose targets are scaled')
  parser.add_argument('--inject_scale', type=float, default=1.0)
  parser.add_argument('--set', action='append', default=[],
                      help='config field=value (a Python literal)')
  args = parser.parse_args()
  if args.plot:
    return plot(args.plot, args.out)

  config = maml_sine.get_config(args.config_arg)
  config.seed = args.seed
  for item in args.set:
    name, value = item.split('=', 1)
    config[name] = ast.literal_eval(value)
  components = train.build_components(config)
  # The checkpoints hold the optimizer state of the run's own config
  # (config.json); a replay with or without the clip differs from it by the
  # clip's empty state in front of Adam's.
  run = (workdir_lib.read_config(args.workdir) or {}).get('config', {})
  run_clipped = run.get('max_meta_grad_norm') is not None
  replay_clipped = config.max_meta_grad_norm is not None
  opt_state = components.state.opt_state
  if replay_clipped and not run_clipped:
    opt_state = opt_state[1]
  elif run_clipped and not replay_clipped:
    opt_state = (optax.EmptyState(), opt_state)
  # Only restores: a manager deletes old steps only when it saves.
  manager = checkpointing.create_manager(args.workdir, max_to_keep=1000)
  rng = jax.random.key(config.seed)
  target = {'state': components.state.replace(opt_state=opt_state),
            'rng': jax.random.key_data(rng)}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          checkpointing._as_arrays(target))  # pylint: disable=protected-access

  def restore(step):
    item = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return item['state'], jax.random.wrap_key_data(item['rng'])

  state = components.state
  if args.from_step:
    state, rng = restore(args.from_step)
    if replay_clipped and not run_clipped:
      state = state.replace(opt_state=(optax.EmptyState(), state.opt_state))
    elif run_clipped and not replay_clipped:
      state = state.replace(opt_state=state.opt_state[1])
  chunk = make_replay_chunk(components, config, args.inject_step,
                            args.inject_scale)
  probe = make_probe(components, config, args.probe_tasks)
  rows = []
  while int(state.step) < args.to_step:
    if int(state.step) % args.probe_every == 0:
      probed = [float(v) for v in probe(state.params)]
    else:
      probed = None
    state, out = chunk(state, rng)
    out = [np.asarray(v) for v in out]
    for i in range(len(out[0])):
      row = {c: float(v[i]) for c, v in zip(COLUMNS, out)}
      row['step'] = int(out[0][i])
      if i == 0 and probed is not None:
        row.update(zip(PROBES, probed))
        row['step_probed'] = row['step'] - 1
      rows.append(row)
  final = [float(v) for v in probe(state.params)]
  print('final probe at step', int(state.step), dict(zip(PROBES, final)))

  with open(args.out, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(COLUMNS) + list(PROBES)
                            + ['step_probed'])
    writer.writeheader()
    writer.writerows(rows)

  base = rows[:1000]
  for column in COLUMNS[1:]:
    med = np.median([r[column] for r in base])
    first = next((r['step'] for r in rows if not r[column] <= 10 * med), None)
    print(f'{column}: median over the first 1,000 steps {med:.4g}; first '
          f'step above 10x: {first}; max {max(r[column] for r in rows):.4g}')
  if args.to_step in manager.all_steps():
    saved, _ = restore(args.to_step)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(saved.params), jax.tree.leaves(state.params)))
    print(f'replay vs the run\'s checkpoint at {args.to_step}: max |param '
          f'difference| {diff:.3g}')


if __name__ == '__main__':
  main()
