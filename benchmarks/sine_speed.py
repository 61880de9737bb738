"""Meta-steps/s of the trainer against the bare jitted core, in one process.

  python benchmarks/sine_speed.py

The default config (configs/maml_sine.py): meta-batch 25, K=10.
Measured:
  bare_core       the usual hand-written step: one jitted
                  value_and_grad(maml_loss) + Adam per call, batch sampled in
                  the same jitted call.
  bare_fused      the same step fused 100 per call in a lax.scan (no I/O).
  trainer         `train_and_evaluate` on the default config, periodic
                  actions (logging, evaluation on 600 tasks, checkpoints)
                  included. Fixed costs (compilation, set-up, final
                  evaluation) are cancelled by timing two runs of different
                  lengths: rate = (N2 - N1) / (T2 - T1), with N1 = 10,000
                  and N2 = 70,000 (the whole protocol).
Printed as a table with ratios to bare_core from the same run.

`--before_after` (or `--before_after=guard`) also times what the blow-up
guard costs, in the same process: bare_fused and the trainer on the
default config without it (``max_meta_grad_norm=None``, and the trainer's
spike monitor fed nothing) against the default, and prints the ratio
after / before. `--before_after=lslr` times the default's learned inner
rates the same way: before is the default as it was before them
(``learn_inner_lr=False``: fixed rates, and ``unroll_inner_steps=False``:
the inner steps in a loop), after the default; a third column, fixed
rates with the steps unrolled, shows what the rates themselves cost.
Before/after, the fused step is timed per call of 100 meta-steps, the
configs called in turn `--before_after_calls` times (median per config):
on a shared machine, timing each config alone for a few seconds gave
ratios that moved by 20% from one run to the next.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import maml_sine  # pylint: disable=g-import-not-at-top
from maml_plugin import spikes
from maml_plugin import train


def _rate(fn, state, steps_per_call, seconds):
  state = fn(state, 0)  # compile
  jax.block_until_ready(state)
  calls, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    calls += 1
    state = fn(state, calls)
  jax.block_until_ready(state)
  return calls * steps_per_call / (time.perf_counter() - t0)


def _fused(config, steps_per_call):
  """(call, state): `call(state, i)` runs `steps_per_call` fused meta-steps."""
  problem = train.create_problem(config)
  tx = train.create_optimizer(config)
  algorithm = train.create_algorithm(config, problem, tx)
  chunk = jax.jit(train.make_train_chunk(
      algorithm.train_step, problem.tasks, meta_batch_size=config.meta_batch_size,
      steps_per_call=steps_per_call), donate_argnums=0)
  key = jax.random.key(0)

  def call(state, i):
    return chunk(state, jax.random.fold_in(key, i))[0]

  return call, train.create_train_state(problem, algorithm, tx)


def bare_interleaved(configs: dict, steps_per_call: int, calls: int) -> dict:
  """Fused meta-steps/s of each config from the median time of `calls`
  calls, the configs called in turn (one call of each per round), so that
  whatever else the machine does slows every column alike."""
  runs = {}
  for name, config in configs.items():
    call, state = _fused(config, steps_per_call)
    state = call(state, 0)  # compile
    runs[name] = [call, jax.block_until_ready(state)]
  times = {name: [] for name in configs}
  for i in range(1, calls + 1):
    for name, run in runs.items():
      t0 = time.perf_counter()
      run[1] = jax.block_until_ready(run[0](run[1], i))
      times[name].append(time.perf_counter() - t0)
  return {name: steps_per_call / statistics.median(t)
          for name, t in times.items()}


def bare(config, steps_per_call, seconds):
  call, state = _fused(config, steps_per_call)
  return _rate(call, state, steps_per_call, seconds)


def trainer_run(config, num_steps, monitor=True):
  config = config.copy_and_resolve_references()
  config.num_train_steps = num_steps
  feed = spikes.SpikeMonitor.meta_losses
  if not monitor:  # The trainer as before the guard: no spike rule.
    spikes.SpikeMonitor.meta_losses = lambda self, first_step, losses: []
  try:
    with tempfile.TemporaryDirectory() as workdir:
      t0 = time.perf_counter()
      train.train_and_evaluate(config, workdir)
      return time.perf_counter() - t0
  finally:
    spikes.SpikeMonitor.meta_losses = feed


def trainer_rate(config, monitor=True):
  """Meta-steps/s of the trainer, fixed costs cancelled (module doc)."""
  n1, n2 = config.eval_every_steps, config.num_train_steps
  return (n2 - n1) / (trainer_run(config, n2, monitor)
                      - trainer_run(config, n1, monitor))


def before_after(config, calls, num_steps, what='guard'):
  """Rows of what `what` costs ('guard': the blow-up guard; 'lslr': the
  learned inner rates, with the unrolled inner steps): without it, with it
  (and for 'lslr' fixed rates unrolled). The fused step: `calls` calls of
  100 meta-steps of each, in turn (`bare_interleaved`); the trainer: runs
  `num_steps` long, interleaved twice."""
  config = config.copy_and_resolve_references()
  config.num_train_steps = num_steps
  before = config.copy_and_resolve_references()
  if what == 'guard':
    before.max_meta_grad_norm = None
    columns = {'before': before, 'after': config}
  else:
    before.learn_inner_lr = False
    del before.rate_meta_lr
    fixed_unrolled = before.copy_and_resolve_references()
    before.unroll_inner_steps = False
    columns = {'before': before, 'after': config,
               'fixed unrolled': fixed_unrolled}
    print('before: fixed rates, inner steps in a loop; after: the default; '
          'fixed unrolled: fixed rates, inner steps unrolled')
  trainer = {n: [] for n in columns}
  for _ in range(2):
    for n, c in columns.items():
      trainer[n].append(
          trainer_rate(c, monitor=n != 'before' or what != 'guard'))
  rows = {f'bare_fused (median of {calls} calls, in turn)':
              bare_interleaved(columns, 100, calls),
          'trainer (median of 2 runs)':
              {n: statistics.median(r) for n, r in trainer.items()}}
  others = [n for n in columns if n != 'after']  # after / each of them
  print(f'{what + " off / on":<40}' +
        ''.join(f'{n:>16}' for n in columns) +
        ''.join(f'{"after/" + n:>22}' for n in others))
  for name, med in rows.items():
    print(f'{name:<40}' + ''.join(f'{m:16.0f}' for m in med.values()) +
          ''.join(f'{med["after"] / med[n]:22.3f}' for n in others))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--seconds', type=float, default=5.0)
  parser.add_argument('--before_after', nargs='?', const='guard',
                      choices=('guard', 'lslr'))
  parser.add_argument('--before_after_steps', type=int, default=30_000)
  parser.add_argument('--before_after_calls', type=int, default=60)
  args = parser.parse_args()
  config = maml_sine.get_config()
  config.num_plot_tasks = 0
  if args.before_after:
    return before_after(config, args.before_after_calls,
                        args.before_after_steps, args.before_after)

  rows = [('bare_core (1 step/call)', bare(config, 1, args.seconds)),
          ('bare_fused (100 steps/call)', bare(config, 100, args.seconds))]
  n1, n2 = config.eval_every_steps, config.num_train_steps
  t1 = trainer_run(config, n1)
  full = trainer_run(config, n2)
  rows.append(('trainer (periodic actions incl.)', (n2 - n1) / (full - t1)))
  rows.append(('trainer end to end (incl. compile)', n2 / full))
  base = rows[0][1]
  print(f'jax {jax.__version__}, {jax.devices()[0].platform}, '
        f'{os.cpu_count()} cpus')
  print(f'{"what":<34}{"meta-steps/s":>14}{"x bare_core":>13}')
  for name, rate in rows:
    print(f'{name:<34}{rate:14.0f}{rate / base:13.2f}')
  print(f'full protocol ({config.num_train_steps} steps + 600-task '
        f'evaluation), wall time: {full:.1f} s')


if __name__ == '__main__':
  main()
