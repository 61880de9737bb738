"""What the two commands print: a short, readable run by default.

By default `maml_plugin.main` prints a start line (config, workdir,
devices, new or resumed run), one progress line per periodic evaluation
(meta-steps/s, ETA and the evaluation's result), the evaluation table and
the files in the workdir: about 25 lines for the sinusoid protocol.
Library log lines (JAX's backend probing, orbax's internals, CLU's metric
lines, which TensorBoard has anyway) are hidden, and log lines lose absl's
``I1127 03:21:10.604511 ... file.py:139]`` prefix. These lines, the run's
results, go to stdout (``> log`` keeps them); warnings and errors, every
library's included, go to stderr. absl's ``--verbosity`` flag, given with
any value (``--verbosity=0`` is absl's default level), brings every line
back in absl's format, all of it on stderr as absl writes it::

  python -m maml_plugin.main --config=configs/maml_sine.py --workdir=/tmp/s
  python -m maml_plugin.main --config=configs/maml_sine.py --workdir=/tmp/s \\
      --verbosity=0                          # everything, as absl logs it

A command calls `exit_on_help` before parsing its flags, `setup` once
they are parsed and `quiet_library_logs` (orbax's file-by-file INFO lines
off, under ``--verbosity`` too); the trainer adds a `ProgressLine` to its
periodic actions. Every log filter of the package is here.
"""

from __future__ import annotations

import asyncio
import logging as std_logging
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from clu import periodic_actions
import jax

from maml_plugin import evaluation
from maml_plugin import workdir as workdir_lib

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)
_HELP_FLAGS = ('-h', '-?', '--help', '-help', '--helpshort', '-helpshort')


def exit_on_help(argv: list[str]) -> None:
  """``--help``: the command's docstring and its own flags, exit status 0.

  absl's own ``--help`` exits with status 1; ``--helpfull`` (every flag of
  every imported library) is left to absl.
  """
  if not any(arg in _HELP_FLAGS for arg in argv[1:]):
    return
  app.usage(shorthelp=True, writeto_stdout=True)
  sys.stdout.write('\nabsl\'s --verbosity=0 (or any value) also shows the '
                   'libraries\' log lines; --helpfull lists every flag.\n')
  sys.stdout.flush()
  sys.exit(0)


def verbose() -> bool:
  """Whether the user asked for absl's log lines (``--verbosity``/``-v``)."""
  try:
    return bool(flags.FLAGS['verbosity'].present)
  except (KeyError, flags.Error):
    return True  # No absl flags: leave logging as the caller set it.


def _ours(record) -> bool:
  return os.path.abspath(record.pathname).startswith(_PACKAGE_DIR)


class _Diagnostics(std_logging.Filter):
  """Every library's warnings and errors (absl's handler: stderr)."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING


class _Results(std_logging.Filter):
  """Our own lines below warnings (a handler on stdout)."""

  def filter(self, record):
    return record.levelno < std_logging.WARNING and _ours(record)


class _Plain(std_logging.Formatter):
  """The message alone; warnings and errors say which they are."""

  def format(self, record):
    message = record.getMessage()
    if record.exc_info:
      message += '\n' + self.formatException(record.exc_info)
    if record.levelno >= std_logging.WARNING:
      return f'{record.levelname.lower()}: {message}'
    return message


class _DropLibraryInfo(std_logging.Filter):
  """Drops INFO records of chatty libraries (orbax logs every file it
  writes), and the tracebacks orbax's threads log for an error they pass on
  to the save that `checkpointing.save` reports in one line."""

  def filter(self, record):
    if '/orbax/' not in record.pathname:
      return True
    return (record.levelno > std_logging.INFO
            and 'raised an exception' not in record.getMessage())


def quiet_library_logs() -> None:
  """Keeps the log readable: our lines and CLU's, not orbax's internals."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())


def _is_abandoned_write_callback(exc_type, exc, tb) -> bool:
  """The callback of a tensorstore write that finished after orbax closed
  the save's event loop (the save failed, a full disk, and was abandoned):
  ``RuntimeError('Event loop is closed')`` raised by asyncio's
  ``call_soon_threadsafe`` called from tensorstore's C++, which prints it
  with ``PyErr_Print`` (so `sys.excepthook`), in whichever thread completed
  the write. Its traceback holds asyncio's two frames and nothing else: no
  Python code called it. Nothing is lost by it: the save already failed.
  The same error raised under any Python caller is not this, and prints.
  """
  if exc_type is not RuntimeError or str(exc) != 'Event loop is closed':
    return False
  frames = [frame.f_code for frame, _ in traceback.walk_tb(tb)]
  return bool(frames) and frames[-1].co_name == '_check_closed' and all(
      os.path.dirname(code.co_filename) == _ASYNCIO_DIR for code in frames)


def _excepthook(previous):
  def hook(exc_type, exc, tb):
    if _is_abandoned_write_callback(exc_type, exc, tb):
      logging.debug('Ignored the callback of an abandoned write: %s', exc)
      return
    previous(exc_type, exc, tb)
  hook.maml_plugin = True
  return hook


def _unraisablehook(previous):
  # tensorstore may hand the same callback's error to PyErr_WriteUnraisable
  # ("Exception ignored in: ...") instead of PyErr_Print: the same filter.
  def hook(unraisable):
    if _is_abandoned_write_callback(unraisable.exc_type, unraisable.exc_value,
                                    unraisable.exc_traceback):
      logging.debug('Ignored the callback of an abandoned write: %s',
                    unraisable.exc_value)
      return
    previous(unraisable)
  hook.maml_plugin = True
  return hook


def setup() -> None:
  """Our log lines only, without absl's prefix, on stdout, and warnings and
  errors on stderr, unless ``--verbosity`` was given. Idempotent; call it
  after the flags are parsed.

  Always (``--verbosity`` or not): the tracebacks that tensorstore's
  threads print when a write of a failed save completes after the save
  gave up (`_is_abandoned_write_callback`; as an uncaught or as an
  unraisable exception) are dropped, so a full disk
  ends in the one line naming the checkpoint.
  """
  if not getattr(sys.excepthook, 'maml_plugin', False):
    sys.excepthook = _excepthook(sys.excepthook)
  if not getattr(sys.unraisablehook, 'maml_plugin', False):
    sys.unraisablehook = _unraisablehook(sys.unraisablehook)
  if verbose():
    return
  handler = logging.get_absl_handler()
  if any(isinstance(f, _Diagnostics) for f in handler.filters):
    return
  handler.addFilter(_Diagnostics())
  handler.setFormatter(_Plain())
  results = std_logging.StreamHandler(sys.stdout)
  results.addFilter(_Results())
  results.setFormatter(_Plain())
  std_logging.getLogger().addHandler(results)


def format_duration(seconds: float) -> str:
  """``'42 s'``, ``'3 min 05 s'``, ``'2 h 07 min'``."""
  seconds = max(0, round(seconds))
  if seconds < 60:
    return f'{seconds} s'
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f'{minutes} min {seconds:02d} s'
  hours, minutes = divmod(minutes, 60)
  return f'{hours} h {minutes:02d} min'


class ProgressLine(periodic_actions.PeriodicAction):
  """One log line per periodic evaluation: step, meta-steps/s, ETA, result.

  The rate is measured between two lines, over everything the loop did in
  between (training, evaluation, checkpoints), so the ETA is the time the
  run will really take; the first line's interval starts where
  ``progress(first_step)`` was called (before the first chunk ran; the
  trainer compiles before that, `train.compile_training`). With
  `evaluation` (a `maml_plugin.actions.FewShotEvaluation` that ran earlier
  at the same step) the line ends with its mean metric before adapting,
  after one step and after the most steps.
  """

  def __init__(self, *, num_train_steps: int, every_steps: int,
               evaluation_action=None):
    super().__init__(every_steps=every_steps, on_steps=[num_train_steps])
    self._num_train_steps = num_train_steps
    self._evaluation = evaluation_action

  def _should_trigger(self, step: int, t: float) -> bool:
    # The call at the first step only starts the clock.
    return step != self._previous_step and super()._should_trigger(step, t)

  def _apply(self, step: int, t: float):
    rate = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
    total = self._num_train_steps
    message = (f'step {step:,}/{total:,} ({100 * step / total:.0f}%), '
               f'{rate:,.1f} meta-steps/s')
    if step < total:
      message += f', ETA {format_duration((total - step) / rate)}'
    result = self._evaluation_summary(step)
    if result:
      message += f'; {result}'
    logging.info('%s', message)

  def _evaluation_summary(self, step: int) -> str | None:
    action = self._evaluation
    if action is None or getattr(action, 'last_step', None) != step:
      return None
    metric = action.metric
    summary = evaluation.summarize(action.last_curves, metric)
    last = max(summary)
    shown = sorted({k for k in (0, 1, last) if k in summary})
    values = ' / '.join(f'{summary[k].mean:.3f}' for k in shown)
    steps = '/'.join(str(k) for k in shown)
    return f'held-out {metric} after {steps} inner steps: {values}'


def describe_workdir(workdir: str) -> str:
  """One line naming what the workdir holds, e.g. ``evaluation.json,
  adaptation.png, checkpoints/ (steps 60000, 70000), 1 TensorBoard event
  file``."""
  names = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []
  events = [n for n in names if n.startswith('events.out.tfevents')]
  parts = []
  for name in names:
    if name in events or name == workdir_lib.LOCK_NAME:  # The run's, not a result.
      continue
    path = os.path.join(workdir, name)
    if name == 'checkpoints' and os.path.isdir(path):
      steps = sorted(int(n) for n in os.listdir(path) if n.isdigit())
      parts.append(f'checkpoints/ (steps {", ".join(map(str, steps))})'
                   if steps else 'checkpoints/')
    else:
      parts.append(name + ('/' if os.path.isdir(path) else ''))
  if events:
    parts.append(f'{len(events)} TensorBoard event file'
                 f'{"s" if len(events) > 1 else ""} '
                 f'(tensorboard --logdir {workdir})')
  return ', '.join(parts)



def describe_devices() -> str:
  """``'1 cpu device'``, ``'8 gpu devices over 2 processes'``."""
  devices = jax.devices()
  kinds = sorted({d.platform for d in devices})
  text = (f'{len(devices)} {"/".join(kinds)} '
          f'device{"s" if len(devices) > 1 else ""}')
  if jax.process_count() > 1:
    text += f' over {jax.process_count()} processes'
  return text
