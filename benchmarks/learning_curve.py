r"""Learning curves from trainer workdirs: a markdown table and a PNG.

Reads the periodic few-shot evaluations that `maml_plugin.main` writes to
TensorBoard (`eval/<metric>_step<k>` with `_ci95`), one curve per workdir:

    python benchmarks/learning_curve.py --out=benchmarks/omniglot_curve \
      5w1s=/tmp/omni5w1s 20w1s=/tmp/omni20w1s

writes `benchmarks/omniglot_curve.png` and prints the table (meta-steps
against the metric after 0, 1 and the last number of inner steps, ± ci95).
`--logx` puts meta-steps on a log scale (runs of very different lengths in
one picture); `--paper NAME=VALUE` draws a published number for a run as a
dashed line in its colour (in the metric's unit: % for accuracy).
"""

import argparse
import collections
import glob
import os
import re

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.util import tensor_util

_TAG = re.compile(r'^eval/(?P<metric>[a-z_]+)_step(?P<k>\d+)(?:_(?P<stat>[a-z0-9]+))?$')


def read_evaluations(workdir):
  """{(metric, k, stat): {step: value}} from every event file in workdir.

  A step written twice (a rerun after an interruption) keeps its last value.
  """
  out = collections.defaultdict(dict)
  files = sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*')))
  if not files:
    raise SystemExit(f'{workdir}: no events.out.tfevents.* files')
  for path in files:
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        match = _TAG.match(value.tag)
        if not match:
          continue
        if value.HasField('tensor'):
          number = float(tensor_util.make_ndarray(value.tensor))
        else:
          number = float(value.simple_value)
        key = (match['metric'], int(match['k']), match['stat'] or 'mean')
        out[key][int(event.step)] = number
  if not out:
    raise SystemExit(f'{workdir}: no eval/<metric>_step<k> scalars')
  return out


def summarise(evals):
  """(metric, inner steps shown, rows) with rows (step, {k: (mean, ci95)})."""
  metric = sorted({m for m, _, _ in evals})[0]
  ks = sorted({k for m, k, _ in evals if m == metric})
  shown = sorted({ks[0], ks[min(1, len(ks) - 1)], ks[-1]})
  steps = sorted(evals[(metric, ks[-1], 'mean')])
  rows = []
  for step in steps:
    cells = {}
    for k in shown:
      mean = evals[(metric, k, 'mean')].get(step, float('nan'))
      ci95 = evals.get((metric, k, 'ci95'), {}).get(step, float('nan'))
      cells[k] = (mean, ci95)
    rows.append((step, cells))
  return metric, shown, rows


def _fmt(metric, mean, ci95):
  if metric == 'accuracy':
    return f'{100 * mean:.1f} ± {100 * ci95:.1f}%'
  return f'{mean:.3f} ± {ci95:.3f}'


def markdown(name, metric, shown, rows):
  head = ' | '.join(f'{metric} after {k} step{"s" * (k != 1)}' for k in shown)
  lines = [f'**{name}**', '', f'| meta-steps | {head} |',
           '| --- |' + ' --- |' * len(shown)]
  for step, cells in rows:
    body = ' | '.join(_fmt(metric, *cells[k]) for k in shown)
    lines.append(f'| {step:,} | {body} |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('runs', nargs='+', help='NAME=WORKDIR')
  parser.add_argument('--out', required=True,
                      help='path without extension for the .png and .md')
  parser.add_argument('--logx', action='store_true',
                      help='meta-steps on a log scale')
  parser.add_argument('--paper', action='append', default=[],
                      help='NAME=VALUE: a published number for run NAME')
  args = parser.parse_args()
  paper = {}
  for item in args.paper:
    name, _, value = item.partition('=')
    try:
      paper[name] = float(value)
    except ValueError:
      raise SystemExit(f'--paper {item!r}: expected NAME=NUMBER') from None
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  tables = []
  metric = None
  for run in args.runs:
    name, _, workdir = run.partition('=')
    if not workdir:
      raise SystemExit(f'run {run!r}: expected NAME=WORKDIR')
    metric, shown, rows = summarise(read_evaluations(workdir))
    tables.append(markdown(name, metric, shown, rows))
    k = shown[-1]
    steps = np.array([s for s, _ in rows])
    mean = np.array([c[k][0] for _, c in rows])
    ci95 = np.array([c[k][1] for _, c in rows])
    scale = 100.0 if metric == 'accuracy' else 1.0
    line = ax.errorbar(steps, scale * mean, yerr=scale * ci95, marker='o',
                       capsize=3, label=f'{name}, after {k} inner steps')
    if name in paper:
      ax.axhline(paper.pop(name), color=line[0].get_color(), linestyle='--',
                 linewidth=1, label=f'{name}: MAML paper')
  if paper:
    raise SystemExit(f'--paper names no run: {sorted(paper)}')
  if args.logx:
    ax.set_xscale('log')
  ax.set_xlabel('meta-steps')
  ax.set_ylabel('test accuracy (%)' if metric == 'accuracy' else metric)
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small')
  fig.tight_layout()
  fig.savefig(args.out + '.png', dpi=110)
  text = '\n\n'.join(tables) + '\n'
  with open(args.out + '.md', 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  main()
