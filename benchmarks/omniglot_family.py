"""5-way 1-shot Omniglot for maml, fomaml and mamlpp at one CPU budget.

  MAML_PLUGIN_DATA_DIR=../shared/data python benchmarks/omniglot_family.py \
      --num_train_steps=1000

Each algorithm runs `train_and_evaluate` on configs/maml_omniglot.py (the
MAML paper's 5-way 1-shot protocol: meta-batch 32, inner lr 0.4, Adam 1e-3)
for the same number of meta-steps, then is evaluated on the same 600 tasks
of the Vinyals test split (15 query images per class). Printed: accuracy
mean ± ci95 after 0, 1 and 10 inner steps, and the wall time of the run.

mamlpp here is configs/maml_omniglot.py:mamlpp (`set_mamlpp`): 3 inner
steps in training, per-step batch-norm weights, learned per-step rates
(LSLR), multi-step loss annealed over the first 20% of steps, first order
for the first 30%, cosine meta-LR. `--algorithms=mamlpp` runs it alone;
`--mamlpp_overrides=per_step_bn=False,learn_inner_lr=False` reproduces the
earlier MAML++ row without them.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import maml_omniglot  # pylint: disable=g-import-not-at-top
from benchmarks import trainer_runs  # pylint: disable=g-import-not-at-top


def config_for(name: str, num_train_steps: int, overrides: str = ''):
  config = maml_omniglot.get_config('mamlpp' if name == 'mamlpp' else None)
  config.num_train_steps = num_train_steps
  config.eval_every_steps = num_train_steps
  config.checkpoint_every_steps = num_train_steps
  config.train_step = name
  if name == 'fomaml':
    del config.first_order
  elif name == 'mamlpp':
    maml_omniglot.set_mamlpp_schedules(config)
    for item in filter(None, overrides.split(',')):
      field, value = item.split('=')
      config[field] = type(config[field])(
          value == 'True' if isinstance(config[field], bool) else value)
  return config


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--num_train_steps', type=int, default=1000)
  parser.add_argument('--algorithms', default='maml,fomaml,mamlpp')
  parser.add_argument('--mamlpp_overrides', default='',
                      help='field=value,... applied to the mamlpp config')
  args = parser.parse_args()
  print(f'5-way 1-shot Omniglot, {args.num_train_steps} meta-steps each, 600 '
        'test tasks', flush=True)
  print(f'{"algorithm":>9}  {"0 steps":>15}  {"1 step":>15}  '
        f'{"10 steps":>15}  {"wall s":>6}', flush=True)
  for name in args.algorithms.split(','):
    config = config_for(name, args.num_train_steps, args.mamlpp_overrides)
    with tempfile.TemporaryDirectory() as workdir:
      report, wall = trainer_runs.timed_run(config, workdir)
    cells = [f'{100 * report["inner_steps"][k]["mean"]:.1f} ± '
             f'{100 * report["inner_steps"][k]["ci95"]:.1f}%'
             for k in ('0', '1', '10')]
    print(f'{name:>9}  {cells[0]:>15}  {cells[1]:>15}  {cells[2]:>15}  '
          f'{wall:6.0f}', flush=True)


if __name__ == '__main__':
  main()
