"""A run's workdir: one run at a time, the config it was trained with, and
files written whole or not at all.

Usage (what `train.train_and_evaluate` does before it writes anything)::

  with workdir.lock(workdir):          # WorkdirError if another run holds it
    saved = workdir.read_config(workdir)
    workdir.check_resume(saved, config, step=latest, num_devices=1,
                         training_fields=config_validation.training_fields)
    workdir.write_config(workdir, config, num_devices=1)
    ...

* `lock` takes an exclusive `fcntl.flock` on ``WORKDIR/lock``; the kernel
  drops it when the process ends however it ends, so a lock whose process is
  gone is simply taken over (and logged, with the holder it names).
* ``WORKDIR/config.json`` holds the config the checkpoints were trained with
  and every deliberate change since. A resumed run must keep every field
  that changes training (each field declares it: `fields.field`'s
  ``changes_training``); run length, logging and evaluation may change.
* `write_atomic` writes a file through a temporary one that is removed if
  the write fails, with the permissions of an ordinary new file.
* `describe_os_error` is the one line for a failed read or write: the path
  and the reason (no space, read-only, permission denied).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from typing import Any, Callable, Iterator

from absl import logging

LOCK_NAME = 'lock'
CONFIG_NAME = 'config.json'
# Asked for by name on the command line to resume under a changed config.
ALLOW_FLAG = '--allow_config_change'


class WorkdirError(RuntimeError):
  """The workdir cannot be used: another run holds it, a resume would change
  the training config, or a read or write failed. One line."""


def describe_os_error(e: BaseException, path: str | None = None) -> str:
  """``cannot write PATH: No space left on device`` from an OSError (or an
  error caused by one, or a library error whose text names the reason)."""
  cause = e
  while cause is not None and not isinstance(cause, OSError):
    cause = cause.__cause__ or cause.__context__
  if isinstance(cause, OSError) and cause.errno is not None:
    path = path or cause.filename
    reason = os.strerror(cause.errno)
  else:
    text = str(e)
    reason = next((os.strerror(n) for n in _REPORTED if os.strerror(n) in text),
                  ' '.join(text.split())[:200])
  return f'cannot write {path}: {reason}'


# The reasons a full or read-only disk gives, as the C libraries word them.
_REPORTED = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT,
             errno.EPERM, errno.EFBIG)


def is_io_error(e: BaseException) -> bool:
  """True for an OSError, one behind `e`, or a library error (TensorFlow,
  tensorstore) that reports a full or read-only disk in its text."""
  cause = e
  while cause is not None:
    if isinstance(cause, OSError):
      return True
    cause = cause.__cause__ or cause.__context__
  return any(os.strerror(n) in str(e) for n in _REPORTED)


def check_directory(workdir: str) -> None:
  """Raises `WorkdirError` when `workdir`, or the nearest of its parents
  that exists, is not a directory (a regular file, say): checked before a
  run builds anything, where creating the folder or its lock would fail
  later with only ``File exists`` or ``Not a directory``."""
  path = os.path.abspath(workdir)
  while not os.path.lexists(path):
    parent = os.path.dirname(path)
    if parent == path:
      return
    path = parent
  if os.path.isdir(path):
    return
  what = 'a file, not a directory' if os.path.isfile(path) else (
      'not a directory')
  where = (f'workdir {workdir}' if path == os.path.abspath(workdir)
           else f'workdir {workdir}: {path}')
  raise WorkdirError(f'{where} is {what}: use another --workdir')


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_atomic(path: str, write: Callable[[str], Any]) -> None:
  """Calls ``write(tmp)`` on a temporary file beside `path`, then renames it
  to `path`: a reader sees the old file or the new one, never a part. The
  temporary file is removed when `write` fails (or the run is interrupted),
  and `path` gets the permissions of an ordinary new file (umask), not the
  0600 of a temporary one. An OSError is raised as `WorkdirError` naming
  `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  base = os.path.basename(path)
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(prefix=f'.{base}.', suffix='.tmp',
                               dir=directory)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    write(tmp)
    os.replace(tmp, path)
    tmp = None
  except OSError as e:
    raise WorkdirError(describe_os_error(e, path)) from e
  finally:
    if tmp is not None:
      with contextlib.suppress(OSError):
        os.remove(tmp)


def write_text(path: str, text: str) -> None:
  """`text` into `path`, atomically (`write_atomic`)."""
  def write(tmp):
    with open(tmp, 'w') as f:
      f.write(text)
  write_atomic(path, write)


def _holder() -> dict:
  return {'pid': os.getpid(), 'host': socket.gethostname(),
          'since': time.strftime('%Y-%m-%dT%H:%M:%S%z')}


def _describe_holder(text: str) -> str:
  try:
    held = json.loads(text)
    return f'process {held["pid"]} on {held["host"]} (since {held["since"]})'
  except (ValueError, KeyError, TypeError):
    return 'another process'


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds ``WORKDIR/lock`` exclusively while the block runs.

  Raises `WorkdirError` at once, naming the holder, when another run holds
  it. The lock file names its holder while held and is emptied on release;
  a non-empty file whose lock is free was left by a process that ended
  without releasing it (killed): it is taken over, and that is logged.
  """
  path = os.path.join(workdir, LOCK_NAME)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  except OSError as e:
    raise WorkdirError(describe_os_error(e, path)) from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      held = os.pread(fd, 4096, 0).decode(errors='replace')
      raise WorkdirError(
          f'workdir {workdir} is in use by {_describe_holder(held)} '
          f'(lock {path}); wait for it to end, stop it, or use another '
          '--workdir') from None
    left = os.pread(fd, 4096, 0).decode(errors='replace')
    if left.strip():
      logging.warning('Taking over the lock %s left by %s, which ended '
                      'without releasing it.', path, _describe_holder(left))
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(_holder()).encode(), 0)
      os.fsync(fd)
    except OSError as e:
      raise WorkdirError(describe_os_error(e, path)) from e
    try:
      yield
    finally:
      with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
  finally:
    os.close(fd)  # Closing the last descriptor releases the flock.


def _jsonable(values: dict) -> dict:
  """The config's values as JSON reads them back (tuples become lists)."""
  return json.loads(json.dumps(values, default=str))


def read_json(path: str, what: str = '') -> Any:
  """The JSON document at `path`, or None if there is no such file; one
  that cannot be read or parsed raises `WorkdirError` naming it, then
  `what`."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise WorkdirError(
        f'{path} cannot be read ({type(e).__name__}: '
        f'{" ".join(str(e).split())[:160]}){"; " + what if what else ""}'
    ) from None


def read_config(workdir: str) -> dict | None:
  """``WORKDIR/config.json`` (see `write_config`), or None if absent."""
  path = os.path.join(workdir, CONFIG_NAME)
  saved = read_json(path, 'it holds the config the checkpoints were '
                    'trained with: restore it, or use another --workdir')
  if saved is None:
    return None
  if not isinstance(saved, dict) or not isinstance(saved.get('config'), dict):
    raise WorkdirError(f'{path} holds no "config": restore it, or use '
                       'another --workdir')
  return saved


def write_config(workdir: str, config, *, num_devices: int,
                 previous: dict | None = None, changes=(),
                 rollbacks=()) -> None:
  """Writes ``WORKDIR/config.json``: ``{"config": ..., "num_devices": N,
  "changes": [...]}``, and ``"rollbacks": [...]`` once a run rolled back
  past a blow-up (`maml_plugin.spikes`); `changes` (what `check_resume`
  returned) and `rollbacks` are added to `previous`'s."""
  values = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  previous = previous or {}
  document = {
      'config': _jsonable(values),
      'num_devices': num_devices,
      'changes': list(previous.get('changes', [])) + list(changes),
  }
  rollbacks = list(previous.get('rollbacks', [])) + list(rollbacks)
  if rollbacks:
    document['rollbacks'] = rollbacks
  write_text(os.path.join(workdir, CONFIG_NAME),
             json.dumps(document, indent=2, default=str) + '\n')


def training_changes(saved: dict, config, *,
                     training_fields: Callable[[dict], list[str]]
                     ) -> list[tuple[str, Any, Any]]:
  """The fields that change training (those `training_fields(values)`
  names, `config_validation.training_fields`) whose value in `config`
  differs from the `saved` one (`read_config`): ``(name, saved value,
  value in config)`` each, in declaration order, the values as JSON reads
  them."""
  old = saved['config']
  new = _jsonable(config.to_dict() if hasattr(config, 'to_dict')
                  else dict(config))
  names = training_fields(new)
  names += [n for n in training_fields(old) if n not in names]
  return [(n, old[n], new.get(n)) for n in names
          if n in old and old.get(n) != new.get(n)]


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
  """``config.num_inner_steps: 5 in the workdir, 3 given; ...`` for
  `training_changes`."""
  return '; '.join(f'config.{name}: {old!r} in the workdir, {new!r} given'
                   for name, old, new in changes)


def check_resume(saved: dict, config, *, step: int, num_devices: int,
                 training_fields: Callable[[dict], list[str]],
                 allow_change: bool = False) -> list[dict]:
  """Compares `config` with the `saved` one (`read_config`) for a run
  resumed at `step`, on the fields `training_fields(values)` names
  (`training_changes`).

  Raises `WorkdirError` naming the first field that changes training, its
  saved value and its new one, unless `allow_change`. Returns the changes
  to record (deliberate ones, and a different device count), each logged.
  """
  changes = []
  for name, old, new in training_changes(saved, config,
                                         training_fields=training_fields):
    if not allow_change:
      raise WorkdirError(
          f'config.{name}={new!r} differs from the checkpoints\' '
          f'{old!r} (step {step}), and it changes training: use a '
          f'fresh --workdir, or resume with {ALLOW_FLAG} to change it on '
          'purpose')
    logging.warning('config.%s changed from %r to %r at step %d (%s).',
                    name, old, new, step, ALLOW_FLAG)
    changes.append({'step': step, 'field': name, 'old': old, 'new': new})
  before = saved.get('num_devices')
  if before is not None and before != num_devices:
    logging.warning(
        'Resuming at step %d on %d devices; the checkpoints were trained on '
        '%d. The run continues; results may differ from an uninterrupted '
        'run in the last bits (sums over the task axis in another order).',
        step, num_devices, before)
    changes.append({'step': step, 'field': 'num_devices', 'old': before,
                    'new': num_devices})
  return changes
