"""Peak memory and time per meta-step against inner steps: imaml, maml, and
maml with ``remat_inner_steps``, in one run.

  python benchmarks/imaml_memory.py                    # sinusoid protocol
  python benchmarks/imaml_memory.py --shots=500        # activations dominate

Each row compiles the three registered train steps (`make_algorithm`, Adam
outer step included) on the same meta-batch and MLP and reports XLA's
account of the compiled step's peak scratch memory
(``memory_analysis().temp_size_in_bytes``, as benchmarks/remat_memory.py)
and the median wall time of a step over `--repeats` calls after a warm-up.
The time ratios are against maml in the same row. iMAML runs
`--num_cg_steps` CG iterations (tolerance 0, so all of them run).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import maml_plugin  # pylint: disable=g-import-not-at-top
from benchmarks.remat_memory import measure  # pylint: disable=g-import-not-at-top
from maml_plugin import losses  # pylint: disable=g-import-not-at-top
from maml_plugin.models import MLP  # pylint: disable=g-import-not-at-top
from maml_plugin.tasks import SinusoidTasks  # pylint: disable=g-import-not-at-top

VARIANTS = {
    'maml': dict(train_step='maml'),
    'maml remat': dict(train_step='maml', remat_inner_steps=True),
    'imaml': dict(train_step='imaml'),
}


def step_fn(variant, loss_fn, tx, *, num_steps, num_cg_steps):
  """The jitted ``(state, batch) -> state`` of `variant` and its state's
  params mapping (`init_params`)."""
  hparams = dict(VARIANTS[variant])
  name = hparams.pop('train_step')
  if name == 'imaml':
    hparams.update(prox_lambda=2.0, num_cg_steps=num_cg_steps,
                   cg_tol=1e-30)
  algorithm = maml_plugin.make_algorithm(
      name, loss_fn=loss_fn, tx=tx, inner_lr=0.01, num_inner_steps=num_steps,
      **hparams)
  key = jax.random.key(0)
  return jax.jit(lambda state, batch: algorithm.train_step(state, batch,
                                                           key)[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', default='1,5,10,20,50')
  parser.add_argument('--hidden', default='40,40')
  parser.add_argument('--shots', type=int, default=10)
  parser.add_argument('--meta_batch_size', type=int, default=25)
  parser.add_argument('--num_cg_steps', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=10)
  args = parser.parse_args()
  hidden = tuple(int(h) for h in args.hidden.split(','))

  model = maml_plugin.NNXModel(MLP(1, hidden, 1, rngs=nnx.Rngs(0)))
  loss_fn = model.task_loss(lambda m, b: losses.mse(m(b['x']), b['y']))
  tx = optax.adam(1e-3)
  state = maml_plugin.MetaTrainState.create(model.params, tx)
  batch = SinusoidTasks(num_support=args.shots, num_query=args.shots).sample(
      jax.random.key(0), args.meta_batch_size)
  num_params = sum(x.size for x in jax.tree.leaves(model.params))
  print(f'Meta-step (train step, Adam), MLP 1-{"-".join(map(str, hidden))}-1 '
        f'({num_params} params), {args.meta_batch_size} tasks x '
        f'{args.shots} shots, float32, {jax.devices()[0].platform}, median of '
        f'{args.repeats}; imaml: {args.num_cg_steps} CG steps.\n')
  print('| inner steps | maml MiB | maml remat MiB | imaml MiB | maml ms | '
        'remat ms | imaml ms | remat time x | imaml time x |')
  print('|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for num_steps in (int(s) for s in args.steps.split(',')):
    row = {v: measure(step_fn(v, loss_fn, tx, num_steps=num_steps,
                              num_cg_steps=args.num_cg_steps),
                      state, batch, args.repeats) for v in VARIANTS}
    mib = [row[v][0] / 2**20 for v in VARIANTS]
    ms = [row[v][1] * 1e3 for v in VARIANTS]
    print(f'| {num_steps} | ' + ' | '.join(f'{m:.3f}' for m in mib) + ' | '
          + ' | '.join(f'{t:.2f}' for t in ms)
          + f' | {ms[1] / ms[0]:.2f} | {ms[2] / ms[0]:.2f} |', flush=True)


if __name__ == '__main__':
  main()
