"""Meta-steps/s of the trainer against the bare jitted core, in one process.

  python benchmarks/sine_speed.py

Second-order MAML, 1 inner step, meta-batch 25, K=10 (configs/maml_sine.py).
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
"""

import argparse
import os
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import maml_sine  # pylint: disable=g-import-not-at-top
from maml_plugin import train
from maml_plugin import train_steps


def _rate(fn, state, steps_per_call, seconds):
  state = fn(state, 0)  # compile
  jax.block_until_ready(state)
  calls, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    calls += 1
    state = fn(state, calls)
  jax.block_until_ready(state)
  return calls * steps_per_call / (time.perf_counter() - t0)


def bare(config, steps_per_call, seconds):
  problem = train.create_problem(config)
  tx = train.create_optimizer(config)
  step = train.create_train_step(config, problem, tx)
  chunk = jax.jit(train.make_train_chunk(
      step, problem.tasks, meta_batch_size=config.meta_batch_size,
      steps_per_call=steps_per_call), donate_argnums=0)
  key = jax.random.key(0)

  def fn(state, i):
    return chunk(state, jax.random.fold_in(key, i))[0]

  state = train_steps.MetaTrainState.create(problem.init_params, tx)
  return _rate(fn, state, steps_per_call, seconds)


def trainer_run(config, num_steps):
  config = config.copy_and_resolve_references()
  config.num_train_steps = num_steps
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    return time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--seconds', type=float, default=5.0)
  args = parser.parse_args()
  config = maml_sine.get_config()
  config.num_plot_tasks = 0

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
