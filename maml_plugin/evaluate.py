"""Evaluates the latest checkpoint of a workdir on the held-out tasks.

  python -m maml_plugin.evaluate --config=configs/maml_sine.py --workdir=/tmp/maml_sine

Adapts on each held-out task (`config.num_eval_tasks`, 600 by default) for 0
to `config.eval_num_inner_steps` inner steps, prints a table, and writes
`WORKDIR/evaluation.json` and `WORKDIR/adaptation.png`. Stored state is read,
never changed.
"""

import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from maml_plugin import actions
from maml_plugin import checkpointing
from maml_plugin import config_files
from maml_plugin import config_validation
from maml_plugin import train
from maml_plugin import workdir
from maml_plugin.tasks import episodic
from maml_plugin.tasks import omniglot

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory holding the checkpoints.')
config_flags.DEFINE_config_file(
    'config', None, 'ml_collections config file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def evaluate(config, workdir: str) -> dict:
  """Restores the latest checkpoint in `workdir` and writes the report."""
  config_validation.validate(config)
  problem = train.create_problem(config)
  tx = train.create_optimizer(config)
  algorithm = train.create_algorithm(config, problem, tx)
  state = train.create_train_state(problem, algorithm, tx)
  manager = checkpointing.create_manager(
      workdir, max_to_keep=config.max_checkpoints_to_keep)
  if manager.latest_step() is None:
    raise checkpointing.CheckpointError(
        f'no checkpoint in {manager.directory}: train first with '
        f'python -m maml_plugin.main --workdir={workdir}')
  state, _ = checkpointing.restore_latest(manager, state,
                                          jax.random.key(config.seed))
  manager.close()
  return train.evaluate_and_report(
      config, problem, state.params, int(state.step), workdir,
      evaluator=train.create_evaluator(config, problem, algorithm=algorithm),
      model_state=state.model_state)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  train.quiet_library_logs()
  try:
    report = evaluate(FLAGS.config, FLAGS.workdir)
  except (config_validation.ConfigError, checkpointing.CheckpointError,
          workdir.WorkdirError, omniglot.OmniglotError,
          episodic.EpisodeError) as e:
    raise SystemExit(f'maml_plugin: {e}') from None
  print(actions.format_table(report))
  sys.stdout.flush()


if __name__ == '__main__':
  # A --config path that does not exist: the shipped config of that name.
  app.run(main, flags_parser=config_files.flags_parser)
