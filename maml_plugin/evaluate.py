"""Evaluates the latest checkpoint of a workdir on the held-out tasks.

  python -m maml_plugin.evaluate --config=configs/maml_sine.py --workdir=/tmp/maml_sine

Adapts on each held-out task (`config.num_eval_tasks`, 600 by default) for 0
to `config.eval_num_inner_steps` inner steps, prints a table, and writes
`WORKDIR/evaluation.json` and `WORKDIR/adaptation.png`. Stored state is read,
never changed: nothing else in the workdir is written or created, and a
workdir without a checkpoint stops with one line.

Evaluate with the config the checkpoints were trained with (saved in
``WORKDIR/config.json``). A config whose train state does not fit them
stops with one line naming the fields that differ from it (the comparison
`main` makes on resume, `workdir.training_changes`), and so does an
``inner_lr`` other than the trained one where the checkpoint holds the
inner rates (Meta-SGD, MAML++), which evaluation adapts with instead
(docs/evaluation.md).
"""

import os
import signal
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from maml_plugin import actions
from maml_plugin import algorithms
from maml_plugin import checkpointing
from maml_plugin import components
from maml_plugin import config_files
from maml_plugin import config_validation
from maml_plugin import console
from maml_plugin import memory
from maml_plugin import startup
from maml_plugin import train
from maml_plugin import workdir as workdir_lib
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
  workdir_lib.check_directory(workdir)
  problem = components.create_problem(config)
  tx = components.create_optimizer(config)
  algorithm = components.create_algorithm(config, problem, tx)
  state = components.create_train_state(problem, algorithm, tx, config)
  # Looked for before orbax opens the folder: its manager creates it.
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  no_checkpoint = checkpointing.CheckpointError(
      f'no checkpoint in {workdir}: train first with '
      f'python -m maml_plugin.main --workdir={workdir}')
  if not os.path.isdir(directory):
    raise no_checkpoint
  manager = checkpointing.create_manager(
      workdir, max_to_keep=config.max_checkpoints_to_keep)
  if manager.latest_step() is None:
    manager.close()
    raise no_checkpoint
  try:
    state, _ = checkpointing.restore_latest(manager, state,
                                            jax.random.key(config.seed))
  except checkpointing.CheckpointError as e:
    changes = _training_changes(config, workdir)
    if not changes:
      raise
    raise workdir_lib.WorkdirError(
        f'the checkpoints in {workdir} do not match this config: it differs '
        f'from the one they were trained with '
        f'({workdir_lib.CONFIG_NAME}): {workdir_lib.describe_changes(changes)}'
        '; evaluate with the config they were trained with') from e
  finally:
    manager.close()
  _check_inner_lr_is_used(config, workdir, state)
  # Compiled once, and refused in one line if the device cannot hold it.
  evaluator = components.create_evaluator(config, problem, algorithm=algorithm)
  train.check_memory(evaluator.compile(state.params, state.model_state),
                     memory.EVALUATION, config)
  with train.out_of_memory(memory.EVALUATION, config):
    return train.evaluate_and_report(
        config, problem, state.params, int(state.step), workdir,
        evaluator=evaluator, model_state=state.model_state)


def _training_changes(config, workdir: str) -> list:
  """`workdir_lib.training_changes` against ``WORKDIR/config.json`` (none
  for a workdir from before it was written)."""
  saved = workdir_lib.read_config(workdir)
  if saved is None:
    return []
  return workdir_lib.training_changes(
      saved, config, training_fields=config_validation.training_fields)


def _check_inner_lr_is_used(config, workdir: str, state) -> None:
  """Refuses a `config.inner_lr` other than the trained one where the
  checkpoint holds the inner rates (Meta-SGD, MAML++): evaluation adapts
  with those, so the value would change nothing."""
  if not algorithms.holds_inner_rates(state.params):
    return
  for name, trained, given in _training_changes(config, workdir):
    if name == 'inner_lr':
      raise config_validation.ConfigError(
          f'config.inner_lr={given!r} would not be used: '
          f'{config.train_step!r} keeps its inner rates in the train state, '
          'and evaluation adapts with the checkpoint\'s (which started from '
          f'the workdir\'s {trained!r}); evaluate with '
          f'--config.inner_lr={trained!r}, or train with {given!r}')


def _parse_flags(argv: list[str]) -> list[str]:
  """`--help` exits 0; a --config path that does not exist is the shipped
  config of that name; a bad flag or config argument is one line."""
  console.exit_on_help(argv)
  return config_files.flags_parser(argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  console.quiet_library_logs()
  console.setup()
  startup.end()  # From here a SIGINT is the KeyboardInterrupt below.
  # The run `python -m maml_plugin.main` trained with the same flags.
  followed = config_files.follow_train_step(FLAGS.config, sys.argv)
  if followed:
    logging.info('%s.', followed)
  try:
    report = evaluate(FLAGS.config, FLAGS.workdir)
  except KeyboardInterrupt:
    sys.stderr.write('maml_plugin: SIGINT received during the evaluation: '
                     'stopped; the checkpoints are unchanged\n')
    sys.stderr.flush()
    os._exit(128 + signal.SIGINT)  # Skips orbax's teardown threads.
  except (config_validation.ConfigError, checkpointing.CheckpointError,
          workdir_lib.WorkdirError, omniglot.OmniglotError,
          episodic.EpisodeError, memory.TooLargeError) as e:
    raise SystemExit(f'maml_plugin: {e}') from None
  print(actions.format_table(report))
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
