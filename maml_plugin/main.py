"""Meta-trains and evaluates a maml_plugin config.

  python -m maml_plugin.main --config=configs/maml_sine.py --workdir=/tmp/maml_sine

Override any field with `--config.<field>=<value>`, e.g.
`--config.num_inner_steps=5`. A bad config value stops before training with
one line naming the field, the value and what is allowed.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from maml_plugin import checkpointing
from maml_plugin import config_validation
from maml_plugin import train
from maml_plugin.tasks import episodic
from maml_plugin.tasks import omniglot

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for logs and checkpoints.')
config_flags.DEFINE_config_file(
    'config', None, 'ml_collections config file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  train.quiet_library_logs()
  try:
    config_validation.validate(FLAGS.config)
  except config_validation.ConfigError as e:
    raise SystemExit(f'maml_plugin: bad config: {e}') from None
  logging.info('workdir: %s', FLAGS.workdir)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (checkpointing.CheckpointError, omniglot.OmniglotError,
          episodic.EpisodeError) as e:
    raise SystemExit(f'maml_plugin: {e}') from None


if __name__ == '__main__':
  app.run(main)
