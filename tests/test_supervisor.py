"""The parent process of a multi-process run (`maml_plugin.supervisor`),
piece by piece, with fake trainers that die the ways the real one does.

The real thing (two processes, one SIGKILLed) is in tests/test_multihost.py.
"""

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import pytest

from maml_plugin import distributed
from maml_plugin import supervisor

# What a surviving process 1 printed when process 0 (the coordinator) was
# SIGKILLed, cut from a real run (JAX 0.10.2, CPU, Gloo).
COORDINATOR_GONE = textwrap.dedent("""\
    W1203 13:47:39.884422   20885 preemption_sync_manager.cc:147] Failed to retrieve preemption notice from coordination service: UNAVAILABLE: recvmsg:Connection reset by peer
    E1203 13:47:39.884541   20885 coordination_service_agent.cc:289] Polled an error from coordination service (this can be an error from this or another task).
    F1203 13:47:39.884549   20885 client.h:80] Terminating process because the JAX distributed service detected fatal errors. This most likely indicates that another task died; see the other task logs for more details. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was preempted/died/restarted unexpectedly or this task is experiencing network issues.
    *** Check failure stack trace: ***
    Fatal Python error: Aborted
    """)
# What process 0 printed when process 1 stopped sending heartbeats.
TASK_1_SILENT = textwrap.dedent("""\
    E1203 13:46:18.916514   16961 coordination_service.cc:1520] Shutdown barrier in coordination service has failed:
    INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat timeout. This indicates that the remote task has failed, got preempted, or crashed unexpectedly.
    F1203 13:46:18.917256   16584 client.h:80] Terminating process because the JAX distributed service detected fatal errors.
    Fatal Python error: Aborted
    """)
# What process 0 printed when process 1's trainer was stopped (SIGSTOP).
TASKS_UNHEALTHY = textwrap.dedent("""\
    E1203 14:14:24.704416    6163 coordination_service.cc:1549] [578297071402018669] Use error polling to propagate the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
    1
    The tasks have crashed. Check the task logs for an earlier error, or scheduler events (e.g. preemption, eviction) to debug further. [type.googleapis.com/tensorflow.CoordinationServiceError='']
    F1203 14:14:24.706700    6174 client.h:80] Terminating process because the JAX distributed service detected fatal errors.
    """)
GLOO = ('UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/'
        'pair.cc:538] Read error [127.0.0.1]:4804: Connection reset by peer')


def fake_trainer(body: str) -> list[str]:
  """A child command that runs `body` (Python) instead of the trainer."""
  return [sys.executable, '-c', textwrap.dedent(body)]


def supervise(tmp_path, body, *, process_id=1, num_processes=2, **kwargs):
  stderr = io.StringIO()
  code = supervisor.supervise(
      fake_trainer(body), workdir=str(tmp_path), process_id=process_id,
      num_processes=num_processes, stderr=stderr, **kwargs)
  return code, stderr.getvalue()


def write_checkpoints(tmp_path, *names):
  for name in names:
    os.makedirs(tmp_path / 'checkpoints' / name)


def test_an_abort_for_a_lost_coordinator_is_one_line_naming_it(tmp_path):
  write_checkpoints(tmp_path, '100', '200', '300.orbax-checkpoint-tmp-1')
  code, err = supervise(tmp_path, f"""
      import os, sys
      sys.stderr.write({COORDINATOR_GONE!r})
      sys.stderr.flush()
      os.abort()
      """)
  assert code == supervisor.LOST_PROCESS_EXIT == 75
  log = str(tmp_path / 'process_1.log')
  assert err == (
      'maml_plugin: process 0 of 2 was lost (the coordinator stopped '
      'answering); the checkpoints (100, 200) are intact: rerun every '
      'process with the same flags to resume (full log of process 1: '
      f'{log})\n')
  with open(log) as f:  # Everything the trainer printed is kept.
    assert COORDINATOR_GONE in f.read()


def test_a_heartbeat_timeout_names_the_silent_process(tmp_path):
  code, err = supervise(tmp_path, f"""
      import os, sys
      sys.stderr.write({TASK_1_SILENT!r})
      os.abort()
      """, process_id=0, num_processes=3)
  assert code == 75
  assert err.count('\n') == 1
  assert err.startswith('maml_plugin: process 1 of 3 was lost (it stopped '
                        'sending heartbeats); no checkpoint was saved yet: '
                        'rerun every process'), err


def test_the_trainers_own_line_is_the_only_line(tmp_path):
  """The trainer saw the lost peer itself (a failed collective) and said
  so, after JAX's error for the log: its line and status pass through."""
  line = 'maml_plugin: process 0 of 2 was lost (its connection closed)'
  code, err = supervise(tmp_path, f"""
      import os, sys
      sys.stderr.write('JaxRuntimeError: ' + {GLOO!r} + '\\n')
      sys.stderr.write({line!r} + '\\n')
      sys.stderr.flush()
      os._exit(75)
      """)
  assert (code, err) == (75, line + '\n')


def test_a_death_jax_does_not_explain_is_one_line(tmp_path):
  code, err = supervise(tmp_path, """
      import os, signal, sys
      sys.stderr.write('Fatal Python error: Segmentation fault\\n')
      sys.stderr.flush()
      os.kill(os.getpid(), signal.SIGSEGV)
      """, process_id=0)
  assert code == 128 + signal.SIGSEGV
  assert err == ('maml_plugin: process 0 of 2 ended by SIGSEGV; no '
                 'checkpoint was saved yet: rerun every process with the '
                 'same flags to start again (full log: '
                 f'{tmp_path / "process_0.log"})\n')


def test_a_bugs_traceback_is_shown_with_its_status(tmp_path):
  code, err = supervise(tmp_path, """
      raise ZeroDivisionError('a bug')
      """)
  assert code == 1
  assert err.startswith('Traceback') and 'ZeroDivisionError: a bug' in err


def test_a_finished_run_shows_only_our_lines(tmp_path):
  code, err = supervise(tmp_path, """
      import sys
      sys.stderr.write('I1203 external/xla/some.cc:1] library noise\\n')
      sys.stderr.write('warning: Taking over the lock\\n')
      """)
  assert (code, err) == (0, 'warning: Taking over the lock\n')
  with open(tmp_path / 'process_1.log') as f:
    assert 'library noise' in f.read()


def test_show_all_shows_every_line(tmp_path):
  code, err = supervise(tmp_path, """
      import sys
      sys.stderr.write('I1203 external/xla/some.cc:1] library noise\\n')
      """, show_all=True)
  assert (code, err) == (0, 'I1203 external/xla/some.cc:1] library noise\n')


def test_show_all_still_ends_a_lost_process_with_the_line(tmp_path):
  code, err = supervise(tmp_path, f"""
      import os, sys
      sys.stderr.write({COORDINATOR_GONE!r})
      sys.stderr.flush()
      os.abort()
      """, show_all=True)
  assert code == 75
  assert err.startswith(COORDINATOR_GONE)
  assert err[len(COORDINATOR_GONE):].startswith(
      'maml_plugin: process 0 of 2 was lost'), err


def test_a_workdir_that_cannot_hold_the_log_leaves_the_trainer_to_say_so(
    tmp_path, capfd):
  """The trainer's stderr passes through, and the trainer knows it is the
  child (a second parent would start a third process, and so on)."""
  workdir = tmp_path / 'a_file'
  workdir.write_text('')
  code = supervisor.supervise(fake_trainer(f"""
      import os, sys
      assert {supervisor.PARENT_FD_ENV!r} in os.environ
      sys.stderr.write('maml_plugin: workdir is a file\\n')
      sys.exit(1)
      """), workdir=str(workdir), process_id=0, num_processes=2)
  assert (code, capfd.readouterr().err) == (
      1, 'maml_plugin: workdir is a file\n')


def test_the_log_is_appended_to_never_truncated(tmp_path):
  for word in ('first', 'second'):
    supervise(tmp_path, f'import sys; sys.stderr.write({word!r})')
  with open(tmp_path / 'process_1.log') as f:
    text = f.read()
  assert text.index('first') < text.index('second')
  assert text.count('--- exit status 0') == 2


def test_sigterm_reaches_the_trainer_once(tmp_path):
  """The trainer's save-and-stop on preemption: the signal is passed on
  (once: the child is in its own session) and its status comes back."""
  ready = tmp_path / 'ready'

  def send_sigterm():
    while not ready.exists():
      time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=send_sigterm, daemon=True).start()
  before = signal.getsignal(signal.SIGTERM)
  code, err = supervise(tmp_path, f"""
      import os, signal, sys, time
      received = []
      signal.signal(signal.SIGTERM, lambda s, f: received.append(s))
      open({str(ready)!r}, 'w').close()
      deadline = time.monotonic() + 30
      while not received and time.monotonic() < deadline:
        time.sleep(0.01)
      time.sleep(0.2)  # A second signal would arrive by now.
      sys.stderr.write(f'maml_plugin: SIGTERM received {{len(received)}} '
                       'times: saved step 10\\n')
      sys.exit(128 + signal.SIGTERM)
      """)
  assert (code, err) == (
      143, 'maml_plugin: SIGTERM received 1 times: saved step 10\n')
  assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_reaches_the_trainer_once_and_a_killed_parent_ends_it(
    tmp_path):
  """A terminal's Ctrl-C (SIGINT to the whole process group) reaches the
  trainer once, not twice (a second one stops without saving); SIGKILL of
  the process an operator started ends its trainer too (else the trainer
  would go on holding its part of the run). One test: each needs two
  processes that import JAX."""
  pid_file, count_file = tmp_path / 'trainer.pid', tmp_path / 'sigints'
  trainer = textwrap.dedent(f"""
      import os, signal, time
      from maml_plugin import supervisor
      supervisor.watch_parent()
      count = []
      def handle(signum, frame):
        count.append(signum)
        with open({str(count_file)!r}, 'w') as f:
          f.write(str(len(count)))
      signal.signal(signal.SIGINT, handle)
      with open({str(pid_file)!r}, 'w') as f:
        f.write(str(os.getpid()))
      time.sleep(60)
      """)
  parent = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f"""
      import sys
      from maml_plugin import supervisor
      supervisor.supervise([sys.executable, '-c', {trainer!r}],
                           workdir={str(tmp_path)!r}, process_id=0,
                           num_processes=2)
      """)], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            start_new_session=True)
  deadline = time.monotonic() + 60
  while not (pid_file.exists() and pid_file.read_text()):
    assert time.monotonic() < deadline and parent.poll() is None
    time.sleep(0.05)
  pid = int(pid_file.read_text())
  os.killpg(parent.pid, signal.SIGINT)  # What a terminal does.
  deadline = time.monotonic() + 10
  while not count_file.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  time.sleep(0.3)  # A second SIGINT would arrive by now.
  assert count_file.read_text() == '1'
  parent.send_signal(signal.SIGKILL)
  parent.wait()
  deadline = time.monotonic() + 10
  while os.path.exists(f'/proc/{pid}') and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not os.path.exists(f'/proc/{pid}'), 'the trainer outlived its parent'


@pytest.mark.parametrize('text, process_id, num_processes, want', [
    (COORDINATOR_GONE, 1, 2, (0, 'the coordinator stopped answering')),
    (TASK_1_SILENT, 0, 2, (1, 'it stopped sending heartbeats')),
    (TASKS_UNHEALTHY, 0, 3, (1, 'it stopped sending heartbeats')),
    (GLOO, 0, 2, (1, 'its connection closed')),
    (GLOO, 1, 2, (0, 'its connection closed')),
    (GLOO, 0, 3, (None, 'its connection closed')),  # Only an address.
    ('Traceback ...\nZeroDivisionError: a bug', 0, 2, None),
])
def test_find_lost_process(text, process_id, num_processes, want):
  got = distributed.find_lost_process(text, process_id=process_id,
                                      num_processes=num_processes)
  assert got == (None if want is None else distributed.LostProcess(*want))


def test_describe_lost_names_the_step_and_an_unknown_process(tmp_path):
  write_checkpoints(tmp_path, '100')
  line = supervisor.describe_lost(
      distributed.LostProcess(None, 'its connection closed'),
      workdir=str(tmp_path), process_id=2, num_processes=3, step=130)
  assert line.startswith('a process of 3 was lost (its connection closed '
                         'after step 130); the checkpoints (100) are intact')


def test_only_jaxs_lost_peer_errors_are_lost_peers():
  assert distributed.is_peer_lost(jax.errors.JaxRuntimeError(GLOO))
  assert not distributed.is_peer_lost(
      jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: out of memory'))
  assert not distributed.is_peer_lost(ValueError(GLOO))
