"""Sinusoid meta-training over seeds and numerically distinct CPU settings.

  python benchmarks/sine_stability.py --workdir=/tmp/stability \\
      --seeds=0,1,2,3,4 --settings=default,isa_sse4_2,ulp --out=RESULTS.md
  python benchmarks/sine_stability.py --workdir=/tmp/stability_anil \\
      --config_arg=anil --seeds=0,1,2 --settings=default,isa_sse4_2

Machines of one kind round differently (AVX2 against AVX-512, other
kernels), and a chaotic meta-training run can blow up on one and not on
another. This script stands in for other machines on one box: each run of
the grid is `train.train_and_evaluate` on `configs/maml_sine.py[:ARG]` in
its own process, under one setting:

  default      the machine's own kernels;
  isa_sse4_2   XLA_FLAGS=--xla_cpu_max_isa=SSE4_2 (other kernels, other
               rounding: on an AVX-512 CPU, AVX and SSE4_2 change the
               numbers in the 5th-6th digit while AVX2 does not);
  isa_avx      XLA_FLAGS=--xla_cpu_max_isa=AVX;
  ulp          every initial parameter moved by one unit in the last place
               (numpy.nextafter towards +inf);
  float64      the whole run in float64 (jax_enable_x64, parameters and
               optimizer state cast).

Runs go two at a time (`--parallel`) in ``WORKDIR/<setting>_seed<N>``; a
finished run is not run again, so a second call only writes the table.
The table has, for every run, the held-out MSE after 0, 1 and 10 inner
steps at every periodic evaluation and at the end, the non-finite tasks
at any of them, and whether the run meets the checks (`--checks`):

  flagship  0 non-finite tasks at every evaluation, 10-step mean <= 0.12,
            1-step mean <= 0.40 (at every evaluation, the first at 10,000
            meta-steps included), and the un-adapted mean never above 1.5x
            its value at the first evaluation;
  family    finite at every evaluation, and the final 10-step mean no
            worse than the 1-step mean and below the un-adapted one (an
            inner loop that stopped moving gives 10 steps = 1 step).

Extra config fields for every run: `--set field=value` (repeatable),
parsed as Python literals.
"""

import argparse
import ast
import dataclasses
import glob
import json
import math
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETTINGS = ('default', 'isa_sse4_2', 'isa_avx', 'ulp', 'float64')
XLA_ISA = {'isa_sse4_2': 'SSE4_2', 'isa_avx': 'AVX'}


def worker(args) -> None:
  """One run of the grid in this process (the parent set XLA_FLAGS)."""
  import jax  # pylint: disable=g-import-not-at-top
  if args.setting == 'float64':
    jax.config.update('jax_enable_x64', True)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import maml_sine  # pylint: disable=g-import-not-at-top
  from maml_plugin import algorithms  # pylint: disable=g-import-not-at-top
  from maml_plugin import train  # pylint: disable=g-import-not-at-top

  config = maml_sine.get_config(args.config_arg)
  config.seed = args.seed
  for item in args.set:
    name, value = item.split('=', 1)
    config[name] = ast.literal_eval(value)
  build = train.build_components

  def perturbed(cfg):
    components = build(cfg)
    state = components.state
    if args.setting == 'ulp':
      params = jax.tree.map(
          lambda p: jnp.asarray(np.nextafter(np.asarray(p), np.inf)),
          state.params)
      state = state.replace(params=params)
    elif args.setting == 'float64':
      params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64),
                            state.params)
      tx = train.create_optimizer(cfg)
      state = algorithms.MetaTrainState.create(params, tx, state.model_state)
    return dataclasses.replace(components, state=state)

  train.build_components = perturbed
  train.train_and_evaluate(config, args.run_dir)


def run_dir(workdir: str, setting: str, seed: int) -> str:
  return os.path.join(workdir, f'{setting}_seed{seed}')


def finished(path: str) -> bool:
  report = os.path.join(path, 'evaluation.json')
  return os.path.exists(report)


def launch(args, setting: str, seed: int) -> subprocess.Popen:
  env = dict(os.environ)
  if setting in XLA_ISA:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                        f' --xla_cpu_max_isa={XLA_ISA[setting]}').strip()
  path = run_dir(args.workdir, setting, seed)
  os.makedirs(path, exist_ok=True)
  command = [sys.executable, os.path.abspath(__file__), '--worker',
             f'--setting={setting}', f'--seed={seed}', f'--run_dir={path}']
  if args.config_arg:
    command.append(f'--config_arg={args.config_arg}')
  command += [f'--set={s}' for s in args.set]
  log = open(os.path.join(args.workdir, f'{setting}_seed{seed}.log'), 'w')
  return subprocess.Popen(command, env=env, stdout=log,
                          stderr=subprocess.STDOUT, cwd=ROOT)


def run_rows(path: str) -> list[dict]:
  """One row per periodic evaluation, then the final one (``step='final'``):
  the mean MSE after 0, 1 and 10 steps and the non-finite tasks."""
  rows = []
  from sine_results import eval_scalars  # pylint: disable=g-import-not-at-top
  for step, tags in sorted(eval_scalars(path).items()):
    rows.append({'step': step, **{
        k: tags.get(f'eval/mse_step{k}', math.nan) for k in (0, 1, 10)},
        'nonfinite': max(tags.get(f'eval/mse_step{k}_nonfinite', 0)
                         for k in range(11))})
  with open(os.path.join(path, 'evaluation.json')) as f:
    report = json.load(f)
  steps = report['inner_steps']
  last = str(max(int(k) for k in steps))
  rows.append({'step': 'final', 0: steps['0']['mean'], 1: steps['1']['mean'],
               10: steps[last]['mean'],
               'nonfinite': max(v['nonfinite'] for v in steps.values())})
  return rows


def check(rows: list[dict], kind: str) -> list[str]:
  """What a run fails of the `kind` checks (empty: it passes)."""
  failed = []
  finite = all(math.isfinite(r[k]) for r in rows for k in (0, 1, 10))
  if kind == 'flagship':
    if any(r['nonfinite'] for r in rows) or not finite:
      failed.append('non-finite tasks')
    if max(r[10] for r in rows) > 0.12:
      failed.append('10-step > 0.12')
    if max(r[1] for r in rows) > 0.40:
      failed.append('1-step > 0.40')
    if max(r[0] for r in rows) > 1.5 * rows[0][0]:
      failed.append('un-adapted > 1.5x its first value')
  else:
    if not finite:
      failed.append('not finite')
    if not rows[-1][10] <= rows[-1][1]:
      failed.append('10 steps worse than 1')
    if not rows[-1][10] < rows[-1][0]:
      failed.append('adapting does not help')
  return failed


def _num(v) -> str:
  if not math.isfinite(v):
    return str(v)
  return f'{v:.3g}' if abs(v) >= 1e3 else f'{v:.3f}'


def _why_stopped(workdir: str, setting: str, seed: int) -> str:
  """The last error line of a run that did not finish."""
  try:
    with open(os.path.join(workdir, f'{setting}_seed{seed}.log')) as f:
      errors = [line.strip() for line in f if 'Error' in line.split(':')[0]]
  except OSError:
    return 'no log'
  return errors[-1] if errors else 'no error line in its log'


def table(args, results: dict) -> str:
  lines = [f'configs/maml_sine.py{":" + args.config_arg if args.config_arg else ""}'
           f'{" " + " ".join("--config." + s for s in args.set) if args.set else ""}'
           f'; {platform.processor() or platform.machine()}, '
           f'{os.cpu_count()} cores; checks: {args.checks}', '',
           '| setting | seed | MSE after 0 / 1 / 10 steps at each evaluation '
           '(last: final 600-task evaluation) | non-finite tasks | worst 1 '
           '/ 10 steps | checks |', '|---|---|---|---|---|---|']
  passed = 0
  for (setting, seed), rows in results.items():
    cells = ' · '.join(f'{_num(r[0])} / {_num(r[1])} / {_num(r[10])}'
                       for r in rows)
    failed = check(rows, args.checks)
    passed += not failed
    lines.append(
        f'| {setting} | {seed} | {cells} | '
        f'{int(sum(r["nonfinite"] for r in rows))} | '
        f'{_num(max(r[1] for r in rows))} / {_num(max(r[10] for r in rows))}'
        f' | {"pass" if not failed else "FAIL: " + ", ".join(failed)} |')
  every = [r for rows in results.values() for r in rows]
  later = [r for rows in results.values() for r in rows[1:]]
  lines += ['', f'{passed} of {len(results)} runs pass. Worst over all runs '
            f'and evaluations: 10 steps {_num(max(r[10] for r in every))}, '
            f'1 step {_num(max(r[1] for r in every))} (after the first '
            f'evaluation {_num(max(r[1] for r in later))}), un-adapted '
            f'{_num(max(r[0] for r in every))}, non-finite tasks '
            f'{int(sum(r["nonfinite"] for r in every))}. Final 10-step mean '
            f'over runs {_num(sum(rows[-1][10] for rows in results.values()) / len(results))}'
            f' [{_num(min(rows[-1][10] for rows in results.values()))}, '
            f'{_num(max(rows[-1][10] for rows in results.values()))}].']
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='/tmp/sine_stability')
  parser.add_argument('--config_arg', default=None)
  parser.add_argument('--seeds', default='0,1,2,3,4')
  parser.add_argument('--settings', default='default,isa_sse4_2,ulp')
  parser.add_argument('--set', action='append', default=[])
  parser.add_argument('--checks', choices=('flagship', 'family'),
                      default=None, help='default: flagship without '
                      '--config_arg, else family')
  parser.add_argument('--parallel', type=int, default=2)
  parser.add_argument('--out', default=None)
  # One run (internal).
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--setting', default='default', help=argparse.SUPPRESS)
  parser.add_argument('--seed', type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument('--run_dir', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args)
  if args.checks is None:
    args.checks = 'family' if args.config_arg else 'flagship'
  settings = args.settings.split(',')
  bad = [s for s in settings if s not in SETTINGS]
  if bad:
    parser.error(f'--settings: {bad} not in {SETTINGS}')
  grid = [(s, int(seed)) for seed in args.seeds.split(',') for s in settings]
  todo = [g for g in grid if not finished(run_dir(args.workdir, *g))]
  os.makedirs(args.workdir, exist_ok=True)
  running, start = [], time.time()
  while todo or running:
    while todo and len(running) < args.parallel:
      g = todo.pop(0)
      running.append((g, launch(args, *g)))
    time.sleep(2)
    for item in list(running):
      if item[1].poll() is not None:
        running.remove(item)
        print(f'{item[0]} exit {item[1].returncode} after '
              f'{time.time() - start:.0f} s', flush=True)
  results, stopped = {}, {}
  for g in grid:
    path = run_dir(args.workdir, *g)
    if finished(path):
      results[g] = run_rows(path)
    else:
      stopped[g] = _why_stopped(args.workdir, *g)
  text = table(args, results)
  for (setting, seed), why in stopped.items():
    text += (f'\n- {setting}, seed {seed}: no final evaluation (FAIL): '
             f'{why}')
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  main()
