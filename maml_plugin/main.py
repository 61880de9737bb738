r"""Meta-trains and evaluates a maml_plugin config.

  python -m maml_plugin.main --config=configs/maml_sine.py --workdir=/tmp/maml_sine

Override any field with `--config.<field>=<value>`, e.g.
`--config.num_inner_steps=5`. A bad config value, an unknown field or a value
of the wrong type stops before training with one line naming the field, the
value and what is allowed.

Several hosts (one process each) train one run together::

  python -m maml_plugin.main ... --coordinator_address=10.0.0.1:1234 \
      --num_processes=2 --process_id=0      # and --process_id=1 on the other

A lost process ends the others with one line, exit 75 (docs/devices.md).

By default the run prints a few lines (`maml_plugin.console`); absl's
`--verbosity=0` shows every library's log lines too.
"""

import difflib
import os
import re
import signal
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from maml_plugin import checkpointing
from maml_plugin import config_files
from maml_plugin import config_validation
from maml_plugin import console
from maml_plugin import distributed
from maml_plugin import guards
from maml_plugin import memory
from maml_plugin import spikes
from maml_plugin import startup
from maml_plugin import supervisor
from maml_plugin import train
from maml_plugin import workdir
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
flags.DEFINE_integer('heartbeat_timeout_seconds',
                     distributed.HEARTBEAT_TIMEOUT_SECONDS,
                     'Seconds of silence before a process is lost.')
flags.DEFINE_bool('allow_config_change', False,
                  'Resume even though a field that changes training differs '
                  'from the config the checkpoints were trained with '
                  '(recorded in WORKDIR/config.json).')
flags.mark_flags_as_required(['config', 'workdir'])

_OVERRIDE = re.compile(r'^--config\.([\w.]+)=(.*)$')
_PARSE_ERROR = re.compile(r'flag --config\.([\w.]+)=(.*?): ')


def _fail(message: str, code: int = 1):
  """One line on stderr, exit `code`; skips teardown, whose library threads
  (orbax's event loop after a failed restore) would print tracebacks."""
  sys.stderr.write(f'maml_plugin: {message}\n')
  sys.stderr.flush()
  os._exit(code)


def _one_line(e: Exception) -> str:
  # A KeyError's str() is the repr of its message, quotes and \n included.
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  return ' '.join(text.split())


def _explain_config_error(argv: list[str]) -> str | None:
  """One line for a failure in the config file or in an override of a field
  the config lacks (ml_collections says it in several lines), or None."""
  value = config_files.config_value(argv)
  if value is None:
    return None
  try:
    config = config_files.load(value)
  except Exception as e:  # The config file's own error, e.g. a bad `:arg`.
    return f'--config={value}: {type(e).__name__}: {_one_line(e)}'
  fields = list(config.keys()) if hasattr(config, 'keys') else []
  try:  # The fields of the user's own entries become known too.
    config_validation.import_modules(config)
  except (config_validation.ConfigError, AttributeError):
    pass  # Said in one line when the config is validated.
  for arg in argv[1:]:
    match = _OVERRIDE.match(arg)
    if not match:
      continue
    name, override = match.groups()
    field = name.split('.', 1)[0]
    if field in fields:
      continue
    try:  # A field nothing registered declares: the closest that exists.
      config_validation.check_override(name, override)
    except config_validation.ConfigError as e:
      return str(e)
    close = difflib.get_close_matches(field, fields, n=3, cutoff=0.5)
    names = ', '.join(f'config.{f}' for f in (close or sorted(fields)))
    return (f'config.{name}={override}: {value} has no field {field!r} '
            f'({"close names" if close else "its fields"}: {names})')
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config errors as one line (no traceback).

  A `--config` path that does not exist is looked up among the shipped
  configs (`config_files.resolve`). Overrides are checked by name only when
  ml_collections refuses them, so that a field only a user's module
  declares (``config.imports``) is accepted.
  """
  console.exit_on_help(argv)
  try:
    resolved = config_files.resolve_argv(argv)
  except config_files.ConfigFileError as e:
    _fail(f'bad config: {e}')
  try:
    return FLAGS(resolved)
  except Exception as e:  # ml_collections raises many types while overriding.
    explained = _explain_config_error(argv)
    if explained:
      _fail(f'bad config: {explained}')
    match = _PARSE_ERROR.search(str(e))
    if isinstance(e, flags.Error) and match:
      _fail('bad config: ' + config_validation.describe_parse_error(
          *match.groups()))
    if isinstance(e, flags.Error):
      _fail(f'bad flag: {_one_line(e)}')
    _fail(f'bad config: {type(e).__name__}: {_one_line(e)}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  console.quiet_library_logs()
  console.setup()
  if (FLAGS.num_processes or 0) > 1 and isinstance(FLAGS.process_id, int):
    if not supervisor.is_child():
      sys.exit(supervisor.supervise(
          supervisor.child_command(), workdir=FLAGS.workdir,
          process_id=FLAGS.process_id, num_processes=FLAGS.num_processes,
          show_all=console.verbose()))
    supervisor.watch_parent()
  try:
    distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
        heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds)
    followed = config_files.follow_train_step(FLAGS.config, sys.argv)
    if followed:
      logging.info('%s.', followed)
    config_validation.validate(FLAGS.config,
                               num_devices=distributed.num_task_devices())
    workdir.check_directory(FLAGS.workdir)
  except config_validation.ConfigError as e:
    _fail(f'bad config: {e}')
  except workdir.WorkdirError as e:
    _fail(str(e))
  logging.info('config file: %s; workdir: %s; %s',
               config_flags.get_config_filename(FLAGS['config']),
               FLAGS.workdir, console.describe_devices())
  startup.end()  # From here a SIGINT is the trainer's (or the line below).
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                             allow_config_change=FLAGS.allow_config_change)
    logging.info('In %s: %s', FLAGS.workdir,
                 console.describe_workdir(FLAGS.workdir))
  except train.Interrupted as e:  # 128 + signal: what a shell reports.
    _fail(str(e), 128 + e.signum)
  except distributed.PeerLost as e:  # Exits before jax.distributed's
    # shutdown, whose barrier would wait for the lost process.
    cause = e.__cause__ or e
    sys.stderr.write(f'{type(cause).__name__}: {cause}\n')  # For the log.
    lost = distributed.find_lost_process(
        str(e), process_id=FLAGS.process_id,
        num_processes=FLAGS.num_processes)
    _fail(supervisor.describe_lost(
        lost, workdir=FLAGS.workdir, process_id=FLAGS.process_id,
        num_processes=FLAGS.num_processes, step=e.step),
          supervisor.LOST_PROCESS_EXIT)
  except KeyboardInterrupt:  # Ctrl-C before training started.
    _fail('SIGINT received before training: nothing saved; the workdir\'s '
          'checkpoints are as they were', 128 + signal.SIGINT)
  except config_validation.ConfigError as e:  # e.g. a head_filter that
    # matches no parameter of the model, known once the model exists.
    _fail(f'bad config: {e}')
  except (workdir.WorkdirError, checkpointing.CheckpointError,
          guards.NonFiniteError, spikes.SpikeError, omniglot.OmniglotError,
          episodic.EpisodeError, memory.TooLargeError) as e:
    _fail(str(e))
  except Exception as e:  # pylint: disable=broad-except
    if not workdir.is_io_error(e):  # A bug: its traceback helps.
      raise
    _fail(workdir.describe_os_error(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
