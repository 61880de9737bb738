"""Meta-trains and evaluates a maml_plugin config.

  python -m maml_plugin.main --config=configs/maml_sine.py --workdir=/tmp/maml_sine

Override any field with `--config.<field>=<value>`, e.g.
`--config.num_inner_steps=5`. A bad config value, an unknown field or a value
of the wrong type stops before training with one line naming the field, the
value and what is allowed.

Several hosts (one process each) train one run together::

  python -m maml_plugin.main ... --coordinator_address=10.0.0.1:1234 \
      --num_processes=2 --process_id=0      # and --process_id=1 on the other
"""

import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from maml_plugin import checkpointing
from maml_plugin import config_validation
from maml_plugin import distributed
from maml_plugin import guards
from maml_plugin import train
from maml_plugin.tasks import episodic
from maml_plugin.tasks import omniglot

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for logs and checkpoints.')
config_flags.DEFINE_config_file(
    'config', None, 'ml_collections config file.', lock_config=True)
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for a multi-process run.')
flags.DEFINE_integer('num_processes', None,
                     'Number of processes of a multi-process run.')
flags.DEFINE_integer('process_id', None,
                     'This process\'s index in a multi-process run.')
flags.mark_flags_as_required(['config', 'workdir'])

_OVERRIDE = re.compile(r'^--config\.([\w.]+)=(.*)$')
_PARSE_ERROR = re.compile(r'flag --config\.([\w.]+)=(.*?): ')


def _fail(message: str):
  """One line on stderr, exit 1; skips teardown, whose library threads
  (orbax's event loop after a failed restore) would print tracebacks."""
  sys.stderr.write(f'maml_plugin: {message}\n')
  sys.stderr.flush()
  os._exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config errors as one line (no traceback)."""
  try:
    return FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    # ml_collections raises many types while overriding: name the field.
    for arg in argv[1:]:
      match = _OVERRIDE.match(arg)
      if not match:
        continue
      name, value = match.groups()
      try:
        config_validation.check_override(name, value)
      except config_validation.ConfigError as unknown:
        _fail(f'bad config: {unknown}')
      field = name.split('.', 1)[0]
      if (isinstance(e, (AttributeError, KeyError))
          and field in re.findall(r'\w+', str(e))):
        _fail(f'bad config: config.{name}={value}: not a field of this '
              f'config; set config.{field} in the config file first (a '
              'config\'s fields are fixed once it is loaded)')
    match = _PARSE_ERROR.search(str(e))
    if isinstance(e, flags.Error) and match:
      _fail('bad config: ' + config_validation.describe_parse_error(
          *match.groups()))
    if isinstance(e, flags.Error):
      _fail(f'bad flag: {" ".join(str(e).split())}')
    _fail(f'bad config: {type(e).__name__}: {" ".join(str(e).split())}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  train.quiet_library_logs()
  try:
    distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                           num_processes=FLAGS.num_processes,
                           process_id=FLAGS.process_id)
    config_validation.validate(FLAGS.config,
                               num_devices=distributed.num_task_devices())
  except config_validation.ConfigError as e:
    _fail(f'bad config: {e}')
  logging.info('workdir: %s', FLAGS.workdir)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except config_validation.ConfigError as e:  # e.g. a head_filter that
    # matches no parameter of the model, known once the model exists.
    _fail(f'bad config: {e}')
  except (checkpointing.CheckpointError, guards.NonFiniteError,
          omniglot.OmniglotError, episodic.EpisodeError) as e:
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
