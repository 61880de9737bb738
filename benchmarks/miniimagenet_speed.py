"""mini-ImageNet on a CPU: does the image pipeline keep a training step fed,
and what does a meta-step of the MAML paper's protocol cost?

  python benchmarks/miniimagenet_speed.py --steps=5
  python benchmarks/miniimagenet_speed.py --steps=5 --config=5w5s

Writes synthetic files in the Ravi & Larochelle layout (random 84x84 RGB
PNGs, `--classes` 64/16/20 of `--images_per_class` each, so the split has
the real classes and a tenth of the real images by default), builds
`mini_imagenet_tasks/csv` from them with TFDS (array_record, as without
TensorFlow), and reads it through configs/maml_miniimagenet.py (the
`tfds_episodic` family), timing both per image. Then it times the
config's registered train step (second order, Conv-4 32 filters with
max-pooling, 84x84 inputs, 15 query images per class, meta-batch 4 or 2)
fed two ways in the same process:

  * pipeline: the step samples its meta-batch from the images on device,
    inside the same jitted call (what the trainer runs);
  * memory: the same step given a meta-batch sampled once beforehand.

Both are compiled and warmed up first; then `--steps` rounds time one step
of each in turn, so that a busy moment of a shared machine slows both
alike. Prints the median seconds per meta-step of each, meta-steps per
second, and the median over rounds of pipeline / memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

import maml_plugin.tasks  # pylint: disable=unused-import  (the builder)
from maml_plugin import config_files
from maml_plugin import tasks as tasks_lib
from maml_plugin import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_csv_layout(root: str, classes, per_class: int, seed: int = 0):
  """Random 84x84 RGB PNGs in the Ravi & Larochelle layout under `root`."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, 'images'))
  first = 0
  for split, count in zip(('train', 'val', 'test'), classes):
    rows = ['filename,label']
    for c in range(first, first + count):
      wnid = f'n{c:08d}'
      for i in range(per_class):
        name = f'{wnid}{i + 1:08d}.png'
        Image.fromarray(rng.integers(0, 256, (84, 84, 3), np.uint8)).save(
            os.path.join(root, 'images', name))
        rows.append(f'{name},{wnid}')
    with open(os.path.join(root, f'{split}.csv'), 'w') as f:
      f.write('\n'.join(rows) + '\n')
    first += count


def timed(fn):
  start = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start, out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--config', default='5w1s',
                      help="maml_miniimagenet's argument: 5w1s or 5w5s")
  parser.add_argument('--classes', default='64,16,20')
  parser.add_argument('--images_per_class', type=int, default=60)
  args = parser.parse_args()
  classes = [int(c) for c in args.classes.split(',')]
  tfds.disable_progress_bar()
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind}, '
        f'{os.cpu_count()} cores')
  with tempfile.TemporaryDirectory() as tmp:
    manual, data_dir = os.path.join(tmp, 'manual'), os.path.join(tmp, 'tfds')
    num_images = sum(classes) * args.images_per_class
    seconds, _ = timed(lambda: write_csv_layout(manual, classes,
                                                args.images_per_class))
    print(f'wrote {num_images:,} PNGs in {seconds:.1f} s')
    builder = tfds.builder('mini_imagenet_tasks/csv', data_dir=data_dir)
    seconds, _ = timed(lambda: builder.download_and_prepare(
        file_format='array_record',
        download_config=tfds.download.DownloadConfig(manual_dir=manual)))
    print(f'tfds build: {seconds:.1f} s, '
          f'{1e3 * seconds / num_images:.2f} ms per image')
    config = config_files.load(
        os.path.join(REPO, 'configs', f'maml_miniimagenet.py:{args.config}'))
    config.data_dir = data_dir
    seconds, _ = timed(lambda: tasks_lib.build_task_problem(config.task,
                                                            config))
    read = (classes[0] + classes[2]) * args.images_per_class
    print(f'read train and test splits ({read:,} images) into memory: '
          f'{seconds:.1f} s, {1e3 * seconds / read:.2f} ms per image')
    problem = train.create_problem(config)
  tx = train.create_optimizer(config)
  algorithm = train.create_algorithm(config, problem, tx)
  state = train.create_train_state(problem, algorithm, tx)
  tasks, num_tasks = problem.tasks, config.meta_batch_size
  step = algorithm.train_step

  pipeline = jax.jit(lambda s, r: step(s, tasks.train_batch(r, num_tasks), r))
  memory = jax.jit(step)
  rng = jax.random.key(0)
  batch = jax.block_until_ready(tasks.train_batch(rng, num_tasks))
  print(f'{args.config}: meta-batch {num_tasks}, {config.num_inner_steps} '
        f'inner steps, {config.num_filters} filters, input '
        f'{tuple(tasks.images.shape[1:])}, query {config.num_query} per class')
  runs = {'pipeline': lambda: pipeline(state, rng)[0].params,
          'memory': lambda: memory(state, batch, rng)[0].params}
  for name, run in runs.items():
    seconds, _ = timed(run)
    print(f'{name}: compile and first step {seconds:.1f} s')
    timed(run)  # warm
  times = {name: [] for name in runs}
  for _ in range(args.steps):
    for name, run in runs.items():
      times[name].append(timed(run)[0])
  ratios = [p / m for p, m in zip(times['pipeline'], times['memory'])]
  for name, values in times.items():
    median = statistics.median(values)
    print(f'{name:9s} {median:.3f} s per meta-step ({1 / median:.3f} '
          f'meta-steps/s; rounds: {", ".join(f"{v:.3f}" for v in values)})')
  print(f'pipeline / memory: {statistics.median(ratios):.3f} (median of '
        f'{len(ratios)} rounds; {min(ratios):.3f} to {max(ratios):.3f})')
  per_step = statistics.median(times['pipeline'])
  print(f'{config.num_train_steps:,} meta-steps at this rate: '
        f'{config.num_train_steps * per_step / 3600:.1f} hours')


if __name__ == '__main__':
  main()
