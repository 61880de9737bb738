"""Sinusoid results table for the MAML family at the same number of meta-steps.

  python benchmarks/sine_family.py --num_train_steps=70000   # paper budget
  python benchmarks/sine_family.py --num_train_steps=2000 --algorithms=maml,metasgd

Each algorithm runs through the real trainer (`train_and_evaluate`) on its
`configs/maml_sine.py:<name>` config (paper protocol: K=10, 1-40-40-1 MLP,
25 tasks per meta-batch), with only the step budget changed, and is
evaluated on the same 600 held-out tasks with its own inner loop. Printed:
MSE mean +- ci95 after 0, 1 and 10 inner steps, and seconds of training.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging  # pylint: disable=g-import-not-at-top

from configs import maml_sine  # pylint: disable=g-import-not-at-top
from benchmarks import trainer_runs  # pylint: disable=g-import-not-at-top


def run(name: str, num_train_steps: int, workdir: str) -> tuple[dict, float]:
  config = maml_sine.get_config(name)
  config.num_train_steps = num_train_steps
  config.steps_per_call = min(config.steps_per_call, num_train_steps)
  for field in ('log_every_steps', 'eval_every_steps',
                'checkpoint_every_steps'):
    config[field] = num_train_steps
  if 'msl_anneal_steps' in config:  # MAML++'s schedules follow the budget.
    config.msl_anneal_steps = num_train_steps // 10
    config.first_order_steps = num_train_steps // 3
  config.num_plot_tasks = 0
  return trainer_runs.timed_run(config, workdir)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_train_steps', type=int, default=70_000)
  parser.add_argument('--algorithms',
                      default='maml,fomaml,reptile,metasgd,anil')
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  rows = []
  for name in args.algorithms.split(','):
    with tempfile.TemporaryDirectory() as workdir:
      report, seconds = run(name, args.num_train_steps, workdir)
    steps = report['inner_steps']
    rows.append((name, steps['0'], steps['1'], steps['10'], seconds))
    print(f'done {name} in {seconds:.0f} s', file=sys.stderr, flush=True)
  print(f'# sinusoid, {args.num_train_steps} meta-steps each, '
        f'{report["num_tasks"]} held-out tasks, MSE mean +- ci95')
  print(f'{"algorithm":<9} {"0 steps":>15} {"1 step":>15} {"10 steps":>15} '
        f'{"train s":>7}')
  for name, s0, s1, s10, seconds in rows:
    cells = [f'{s["mean"]:.3f} +- {s["ci95"]:.3f}' for s in (s0, s1, s10)]
    print(f'{name:<9} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} '
          f'{seconds:7.0f}')


if __name__ == '__main__':
  main()
