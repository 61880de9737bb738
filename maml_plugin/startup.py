"""Ctrl-C while a command starts: one line and exit status 130.

``python -m maml_plugin.main`` (and ``maml_plugin.evaluate``) spends
seconds importing JAX, TensorFlow, orbax and CLU and parsing its flags
before its own handling of SIGINT begins (the trainer's, which saves the
step reached). A SIGINT in that time raised `KeyboardInterrupt` inside
whichever import it landed in: a traceback of a library's internals, and
exit status -2. Nothing has been written by then, and this says so::

  maml_plugin: interrupted (SIGINT) during start-up, before anything was
  written; run the command again to start

The package's ``__init__`` calls `guard_command_start` before it imports
anything else; it installs the handler only in a process that runs one of
`COMMANDS` with ``python -m`` (while runpy imports the package,
``sys.argv[0]`` is ``'-m'``), so importing `maml_plugin` in any other
program changes no signal handler. The command calls `end` where its own
handling takes over. Nothing here imports more than the standard library.
"""

import os
import signal
import sys

COMMANDS = ('maml_plugin.main', 'maml_plugin.evaluate')
MESSAGE = ('maml_plugin: interrupted (SIGINT) during start-up, before '
           'anything was written; run the command again to start')


def running_command() -> str | None:
  """The `COMMANDS` entry this process is starting with ``python -m``, or
  None (an import from a program of the user's, a test, a REPL)."""
  if not sys.argv or sys.argv[0] != '-m':  # runpy has not found it yet.
    return None
  argv = list(getattr(sys, 'orig_argv', ()))
  for i, arg in enumerate(argv):
    if arg == '-m' and i + 1 < len(argv):
      module = argv[i + 1]
    elif arg.startswith('-m') and len(arg) > 2:
      module = arg[2:]
    else:
      continue
    return module if module in COMMANDS else None
  return None


def _interrupted(signum, frame):
  del frame
  # os.write: no buffered stream is re-entered from inside the handler, and
  # os._exit: no library's teardown runs half-imported.
  os.write(2, (MESSAGE + '\n').encode())
  os._exit(128 + signum)


def guard_command_start() -> bool:
  """Installs the start-up SIGINT handler if this process is starting one
  of `COMMANDS` (`running_command`); returns whether it did."""
  if running_command() is None:
    return False
  if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
    return False  # Ignored (a background job, nohup) or the user's own.
  try:
    signal.signal(signal.SIGINT, _interrupted)
  except ValueError:  # Not the main thread: leave signals alone.
    return False
  return True


def end() -> None:
  """Python's own SIGINT handling (`KeyboardInterrupt`) again, where the
  command handles it itself; nothing if `guard_command_start` installed
  nothing."""
  if signal.getsignal(signal.SIGINT) is _interrupted:
    signal.signal(signal.SIGINT, signal.default_int_handler)
