"""One process of a multi-process run, watched by a small parent process.

What `maml_plugin.main` does when ``--num_processes`` is more than 1::

  if not supervisor.is_child():
    sys.exit(supervisor.supervise(supervisor.child_command(), workdir=...,
                                  process_id=0, num_processes=2))
  supervisor.watch_parent()                # in the child: die with the parent

The trainer runs as the child. Its stderr goes, whole, to
``WORKDIR/process_<id>.log`` (appended to, never truncated); only our own
lines (``maml_plugin: ...``, ``warning: ...``) are shown as they come. When
another process of the run is lost, JAX's runtime prints dozens of lines
from C++ (Gloo's failed collective, the coordination service's heartbeat
timeout, an abort) that no Python handler can stop; here they stay in the
log and the parent prints one line naming the lost process, the intact
checkpoints and the log, and exits with `LOST_PROCESS_EXIT`.

SIGTERM and SIGINT are passed on to the child, once each (it runs in a
session of its own, so a terminal's Ctrl-C reaches it only through here):
the trainer's save-and-stop on preemption works as in one process. If the
parent is killed, the child sees its pipe close and ends at once, so a
SIGKILL of the process an operator started ends that process's part of
the run.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence, TextIO

from maml_plugin import distributed

# The child's end of the pipe whose closing tells it the parent is gone.
PARENT_FD_ENV = 'MAML_PLUGIN_PARENT_FD'
# sysexits.h's EX_TEMPFAIL: nothing is wrong with the run; rerun it.
LOST_PROCESS_EXIT = 75
PREFIX = 'maml_plugin: '
# The console's lines (`maml_plugin.console`) and our one-line errors.
_OURS = (PREFIX, 'warning: ', 'error: ', 'critical: ')
# Lines of the child's stderr held to be shown if it fails without saying
# why in a line of ours (a bug's traceback).
_HELD_LINES = 2000


def log_path(workdir: str, process_id: int) -> str:
  return os.path.join(workdir, f'process_{process_id}.log')


def is_child() -> bool:
  return PARENT_FD_ENV in os.environ


def child_command() -> list[str]:
  """This command again: the same interpreter, entry point and flags."""
  return [sys.executable] + sys.orig_argv[1:]


def watch_parent() -> None:
  """In the child: ends this process as soon as the parent's pipe closes."""
  fd = int(os.environ.pop(PARENT_FD_ENV))

  def wait():
    while os.read(fd, 1):
      pass
    os._exit(128 + signal.SIGKILL)  # The parent was killed: so is its run.

  threading.Thread(target=wait, name='parent-watch', daemon=True).start()


def is_ours(line: str) -> bool:
  return line.startswith(_OURS)


def complete_checkpoints(workdir: str) -> list[int]:
  """Steps of the complete checkpoints (an interrupted save's temporary
  folder is not one)."""
  directory = os.path.join(workdir, 'checkpoints')
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  return sorted(int(n) for n in names if n.isdigit())


def _how_to_rerun(workdir: str) -> str:
  steps = complete_checkpoints(workdir)
  if not steps:
    return ('no checkpoint was saved yet: rerun every process with the same '
            'flags to start again')
  shown = ', '.join(str(s) for s in steps)
  return (f'the checkpoints ({shown}) are intact: rerun every process with '
          'the same flags to resume')


def describe_lost(lost: distributed.LostProcess, *, workdir: str,
                  process_id: int, num_processes: int,
                  step: int | None = None) -> str:
  """The one line for a lost process, as seen from `process_id`."""
  who = ('a process' if lost.process is None
         else f'process {lost.process}')
  how = lost.how + (f' after step {step}' if step is not None else '')
  return (f'{who} of {num_processes} was lost ({how}); '
          f'{_how_to_rerun(workdir)} (full log of process {process_id}: '
          f'{log_path(workdir, process_id)})')


def describe_death(signum: int, *, workdir: str, process_id: int,
                   num_processes: int) -> str:
  """The one line for a trainer ended by a signal for no reason JAX names."""
  try:
    name = signal.Signals(signum).name
  except ValueError:
    name = f'signal {signum}'
  return (f'process {process_id} of {num_processes} ended by {name}; '
          f'{_how_to_rerun(workdir)} (full log: '
          f'{log_path(workdir, process_id)})')


def _start(command: Sequence[str], *, stderr):
  """The child, the end of its parent's pipe that this process keeps
  (closed: the child ends), and the signal handlers it replaced."""
  parent_end, child_end = os.pipe()
  try:
    child = subprocess.Popen(
        command, stderr=stderr, pass_fds=(parent_end,),
        env=dict(os.environ, **{PARENT_FD_ENV: str(parent_end)}),
        start_new_session=True)
  finally:
    os.close(parent_end)

  def forward(signum, frame):
    del frame
    if child.poll() is None:
      child.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM,
                                                     signal.SIGINT)}
  return child, child_end, previous


def _stop_forwarding(previous: dict, child_end: int) -> None:
  for signum, handler in previous.items():
    signal.signal(signum, handler)
  os.close(child_end)


def supervise(command: Sequence[str], *, workdir: str, process_id: int,
              num_processes: int, show_all: bool = False,
              stderr: TextIO | None = None) -> int:
  """Runs `command` (the trainer) as the child; returns the exit status.

  * The child's own one-line error or interruption (a line starting
    ``maml_plugin:``): shown as it comes; its status is returned.
  * A lost process (the child's stderr says so in JAX's words, however the
    child ended): one line, `LOST_PROCESS_EXIT`.
  * Killed by a signal for another reason: one line, 128 + the signal.
  * Any other failure (a bug's traceback): the held lines are shown, and
    the child's status returned.

  `show_all` (absl's ``--verbosity``) shows every line as it comes.
  """
  stderr = stderr or sys.stderr
  try:
    os.makedirs(workdir, exist_ok=True)
    log = open(log_path(workdir, process_id), 'ab')
  except OSError:  # The trainer's stderr as it is: it says what is wrong.
    child, child_end, previous = _start(command, stderr=None)
    try:
      code = child.wait()
    finally:
      _stop_forwarding(previous, child_end)
    return code if code >= 0 else 128 - code
  with log:
    log.write(f'--- {time.strftime("%Y-%m-%d %H:%M:%S")} process '
              f'{process_id} of {num_processes}, pid {os.getpid()}: '
              f'{" ".join(command)}\n'.encode())
    log.flush()
    child, child_end, previous = _start(command, stderr=subprocess.PIPE)
    held = collections.deque(maxlen=_HELD_LINES)
    said = False
    try:
      for raw in child.stderr:
        log.write(raw)
        log.flush()
        line = raw.decode(errors='replace')
        if show_all or is_ours(line):
          stderr.write(line)
          stderr.flush()
          said = said or line.startswith(PREFIX)
        if not is_ours(line):  # JAX's words for a lost process among them.
          held.append(line)
      code = child.wait()
    finally:
      _stop_forwarding(previous, child_end)
    log.write(f'--- exit status {code}\n'.encode())
  if said:
    return code if code >= 0 else 128 - code
  lost = distributed.find_lost_process(
      ''.join(held), process_id=process_id, num_processes=num_processes)
  where = dict(workdir=workdir, process_id=process_id,
               num_processes=num_processes)
  if code != 0 and lost is not None:
    stderr.write(PREFIX + describe_lost(lost, **where) + '\n')
    return LOST_PROCESS_EXIT
  if code < 0:
    stderr.write(PREFIX + describe_death(-code, **where) + '\n')
    return 128 - code
  if code != 0 and not show_all:
    stderr.writelines(held)
  return code
