"""The flagship sinusoid run over several seeds: every periodic evaluation.

  python benchmarks/sine_results.py --seeds=0,1,2,3,4 --workdir=/tmp/sine_seeds
  python benchmarks/sine_results.py --config_arg=paper --workdir=/tmp/paper

Runs `train_and_evaluate` on configs/maml_sine.py (or `configs/maml_sine.py:
<config_arg>`) once per seed, in ``WORKDIR/seed<N>`` (a finished run is
resumed at its end, so it only evaluates again: run the seeds as separate
processes at once, then once more to write the table), and prints a
markdown report: for every seed and every periodic evaluation, the held-out
MSE after 1 and 10 inner steps (mean ± ci95, median, non-finite tasks out of
600) read back from the run's TensorBoard events; then the spread over
seeds of each column (mean, min, max). `--out` also writes it to a file.
"""

import argparse
import glob
import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import maml_sine  # pylint: disable=g-import-not-at-top
from maml_plugin import train  # pylint: disable=g-import-not-at-top

STEPS = (1, 10)  # Inner-step counts reported.
STATS = ('', '_ci95', '_median', '_nonfinite')  # Scalar suffixes read back.


def eval_scalars(workdir: str) -> dict[int, dict[str, float]]:
  """``{train_step: {tag: value}}`` of the run's ``eval/`` scalars.

  A step written twice (a resumed run evaluates its last step again) keeps
  the last value written; the values are the same.
  """
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents*'))):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        if value.tag.startswith('eval/') and value.HasField('tensor'):
          out.setdefault(event.step, {})[value.tag] = float(
              tensor_util.make_ndarray(value.tensor))
  return out


def seed_rows(scalars: dict[int, dict[str, float]]) -> list[list[float]]:
  """One row per periodic evaluation: step, then for each of `STEPS` the
  mean, ci95, median and non-finite count."""
  rows = []
  for step in sorted(scalars):
    row = [step]
    for k in STEPS:
      row += [scalars[step].get(f'eval/mse_step{k}{s}', math.nan)
              for s in STATS]
    rows.append(row)
  return rows


def _num(v: float, spec: str = '.3f') -> str:
  return 'nan' if not math.isfinite(v) else format(v, spec)


def per_seed_table(runs: dict[int, list[list[float]]]) -> list[str]:
  head = ['seed', 'meta-step']
  for k in STEPS:
    name = f'{k} step{"s" if k > 1 else ""}'
    head += [f'{name}: mean ± ci95', 'median', 'non-finite']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for seed, rows in runs.items():
    for row in rows:
      cells = [str(seed), f'{row[0]:,}']
      for i in range(len(STEPS)):
        mean, ci95, median, nonfinite = row[1 + 4 * i: 5 + 4 * i]
        cells += [f'{_num(mean)} ± {_num(ci95)}', _num(median),
                  _num(nonfinite, '.0f')]
      lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def spread(values) -> tuple[float, float, float]:
  """Mean, min and max over seeds; NaN if any seed's value is NaN."""
  values = np.asarray(values, np.float64)
  if not np.all(np.isfinite(values)):
    return math.nan, math.nan, math.nan
  return float(values.mean()), float(values.min()), float(values.max())


def spread_table(runs: dict[int, list[list[float]]]) -> list[str]:
  """Each column's mean [min, max] over the seeds, per periodic evaluation."""
  head = ['meta-step']
  for k in STEPS:
    name = f'{k} step{"s" if k > 1 else ""}'
    head += [f'{name}: mean', 'ci95', 'median', 'non-finite']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  steps = sorted({row[0] for rows in runs.values() for row in rows})
  for step in steps:
    rows = [r for rows in runs.values() for r in rows if r[0] == step]
    cells = [f'{step:,}']
    for col in range(1, 1 + 4 * len(STEPS)):
      mean, low, high = spread([r[col] for r in rows])
      spec = '.0f' if col % 4 == 0 else '.3f'
      cells.append(f'{_num(mean, spec if spec == ".3f" else ".1f")} '
                   f'[{_num(low, spec)}, {_num(high, spec)}]')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def report(config_name: str, runs: dict[int, list[list[float]]],
           walls: dict[int, float]) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  lines = [f'# `{config_name}`: held-out MSE over seeds {list(runs)}', '',
           f'Written by `python benchmarks/sine_results.py`, JAX '
           f'{jax.__version__}, {jax.devices()[0].platform} '
           f'({platform.machine()}, {os.cpu_count()} cores). '
           '600 held-out tasks (K=10 support, 100 query points) at every '
           'periodic evaluation; mean ± ci95 and median over the finite '
           'tasks, non-finite: tasks whose MSE is NaN or Inf.', '',
           '## Spread over seeds: mean [min, max] of each column', '']
  lines += spread_table(runs)
  lines += ['', '## Every seed', '']
  lines += per_seed_table(runs)
  if walls:
    lines += ['', 'Wall seconds of this invocation per seed (a finished '
              'run only evaluates again): ' + ', '.join(
                  f'seed {s}: {w:.0f}' for s, w in walls.items())]
  return '\n'.join(lines) + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seeds', default='0,1,2,3,4')
  parser.add_argument('--workdir', required=True,
                      help='runs go to WORKDIR/seed<N> (kept, resumable)')
  parser.add_argument('--config_arg', default=None,
                      help="configs/maml_sine.py's argument, e.g. 'paper'")
  parser.add_argument('--num_train_steps', type=int, default=None)
  parser.add_argument('--report_only', action='store_true',
                      help='read the workdirs, train nothing')
  parser.add_argument('--out', default=None, help='also write the report')
  args = parser.parse_args()
  runs, walls = {}, {}
  for seed in [int(s) for s in args.seeds.split(',')]:
    workdir = os.path.join(args.workdir, f'seed{seed}')
    if not args.report_only:
      config = maml_sine.get_config(args.config_arg)
      config.seed = seed
      config.num_plot_tasks = 0
      if args.num_train_steps:
        config.num_train_steps = args.num_train_steps
      start = time.perf_counter()
      train.train_and_evaluate(config, workdir)
      walls[seed] = time.perf_counter() - start
    runs[seed] = seed_rows(eval_scalars(workdir))
  name = 'configs/maml_sine.py' + (f':{args.config_arg}' if args.config_arg
                                   else '')
  text = report(name, runs, walls)
  print(text, end='')
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  main()
