"""Ctrl-C while a command imports its libraries: one line, exit status 130,
nothing written (`maml_plugin.startup`).

Pins the traceback of whichever library import the SIGINT landed in and
the exit status -2, and the handler leaking into programs that merely
import the package. The moments are counted from when the process maps
jaxlib, which it does only after the package's ``__init__`` has run its
first line: a SIGINT before that (the interpreter's own ``site`` start-up,
about a second on a loaded machine) is Python's, not ours.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from maml_plugin import startup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The trainer's own line for a SIGINT after start-up, before training.
BEFORE_TRAINING = ('maml_plugin: SIGINT received before training: nothing '
                   'saved; the workdir\'s checkpoints are as they were')

pytestmark = pytest.mark.skipif(not os.path.exists('/proc/self/maps'),
                                reason='needs /proc/<pid>/maps (Linux)')


def _wait_for_jaxlib(proc, timeout=300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and proc.poll() is None:
    with open(f'/proc/{proc.pid}/maps') as f:
      if '/jaxlib/' in f.read():
        return
    time.sleep(0.01)
  raise AssertionError('jaxlib was never mapped')


# Runs the rest of its argv as a new Python, SIGINT at its default first,
# as a shell in a terminal starts a command. A suite started in the
# background (`nohup ... &`) passes SIGINT down ignored, and Python then
# leaves it ignored: neither the trainer's line nor KeyboardInterrupt would
# come. (An exec, not `preexec_fn`: no Python between fork and exec.)
SIGINT_AS_FROM_A_TERMINAL = [
    sys.executable, '-c',
    'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
    'os.execv(sys.executable, [sys.executable] + sys.argv[1:])']


def _interrupt(module, workdir, delay):
  proc = subprocess.Popen(
      SIGINT_AS_FROM_A_TERMINAL + [
          '-m', module, '--config=configs/maml_sine.py:quick',
          f'--workdir={workdir}'], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_jaxlib(proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, out, err


@pytest.mark.parametrize('module, delay', [
    ('maml_plugin.main', 0.0), ('maml_plugin.main', 1.0),
    ('maml_plugin.main', 2.0), ('maml_plugin.evaluate', 0.0),
    ('maml_plugin.evaluate', 1.5)])
def test_sigint_during_start_up_is_one_line_and_130(tmp_path, module, delay):
  """At the latest moment a fast machine may have finished importing: then
  the trainer's own line for a SIGINT before training is the one."""
  workdir = tmp_path / 'work'
  code, _, err = _interrupt(module, workdir, delay)
  assert code == 128 + signal.SIGINT, err[-3000:]
  allowed = [startup.MESSAGE]
  if delay >= 2.0:
    allowed.append(BEFORE_TRAINING)
  assert err.splitlines() in [[line] for line in allowed], err[-3000:]
  assert not workdir.exists()  # Nothing written, not even the folder.


def test_importing_the_package_changes_no_signal_handler():
  """A program of the user's that imports maml_plugin keeps Python's own
  SIGINT handling (KeyboardInterrupt)."""
  code = ('import signal, maml_plugin, maml_plugin.main; '
          'print(signal.getsignal(signal.SIGINT) is '
          'signal.default_int_handler, '
          'maml_plugin.startup.running_command())')
  proc = subprocess.run(SIGINT_AS_FROM_A_TERMINAL + ['-c', code], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ['True', 'None'], proc.stdout
