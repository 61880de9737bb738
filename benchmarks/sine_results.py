"""Held-out MSE of the default sinusoid config over several seeds.

  python benchmarks/sine_results.py --seeds=0,1,2,3,4

Runs `train_and_evaluate` on configs/maml_sine.py (the MAML paper protocol,
70,000 meta-steps) once per seed and prints, per seed, the held-out MSE ±
ci95 after 0, 1 and 10 inner steps (600 tasks, 100 query points) from the
run's evaluation.json, the wall time, and the 10-step MSE of every periodic
evaluation read back from the run's TensorBoard events.
"""

import argparse
import glob
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import maml_sine  # pylint: disable=g-import-not-at-top
from benchmarks import trainer_runs  # pylint: disable=g-import-not-at-top


def scalar_history(workdir: str, tag: str) -> list[tuple[int, float]]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = []
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents*'))):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == tag:
          out.append((event.step, float(tf.make_ndarray(value.tensor))))
  return sorted(out)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--seeds', default='0,1,2,3,4')
  parser.add_argument('--num_train_steps', type=int, default=None)
  args = parser.parse_args()
  print(f'{"seed":>4}  {"0 steps":>15}  {"1 step":>15}  {"10 steps":>15}  '
        f'{"wall s":>6}  10-step MSE at each periodic evaluation', flush=True)
  for seed in [int(s) for s in args.seeds.split(',')]:
    config = maml_sine.get_config()
    config.seed = seed
    config.num_plot_tasks = 0
    if args.num_train_steps:
      config.num_train_steps = args.num_train_steps
    with tempfile.TemporaryDirectory() as workdir:
      report, wall = trainer_runs.timed_run(config, workdir)
      history = scalar_history(workdir, 'eval/mse_step10')
    cells = [f'{report["inner_steps"][k]["mean"]:.3f} ± '
             f'{report["inner_steps"][k]["ci95"]:.3f}' for k in ('0', '1', '10')]
    print(f'{seed:>4}  {cells[0]:>15}  {cells[1]:>15}  {cells[2]:>15}  '
          f'{wall:6.1f}  ' + ' '.join(f'{s // 1000}k:{v:.3f}'
                                      for s, v in history), flush=True)


if __name__ == '__main__':
  main()
