"""Long runs left alone: preemption, one run per workdir, resume only under
the config that made the checkpoint, fallback past a bad checkpoint, and
I/O failures in one line.

The signal, concurrency, full-disk and read-only cases run the real command
(`python -m maml_plugin.main`) on the quick sine config; the rest call
`train.train_and_evaluate` on copies of one finished 100-step workdir.
"""

import errno
import fcntl
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import maml_sine
from maml_plugin import checkpointing
from maml_plugin import evaluate
from maml_plugin import train
from maml_plugin import workdir as workdir_lib
from tests import event_files
from tests.workdir_files import snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = dict(num_eval_tasks=20, num_plot_tasks=0, checkpoint_every_steps=50,
            eval_every_steps=100, num_train_steps=100)


def quick_config(**overrides):
  config = maml_sine.get_config('maml,quick')
  config.update(dict(BASE, **overrides))
  return config


def command(workdir, *flags, **overrides):
  values = dict(BASE, **overrides)
  return [sys.executable, '-m', 'maml_plugin.main',
          '--config=configs/maml_sine.py:maml,quick', f'--workdir={workdir}',
          *(f'--config.{k}={v}' for k, v in values.items()), *flags]


def last_line(text):
  return text.strip().splitlines()[-1]


def steps_in(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir,
                                                        'checkpoints'))
                if n.isdigit())


def checkpoint_arrays(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  with ocp.StandardCheckpointer() as checkpointer:
    return jax.tree.leaves(checkpointer.restore(path))


def assert_same_checkpoint(workdir, other, step):
  got, want = checkpoint_arrays(workdir, step), checkpoint_arrays(other, step)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def run_scalars(workdir):
  return {k: v for k, v in event_files.read_scalars(workdir).items()
          if k[0].startswith(('train/', 'eval/'))}


# Preemption.

# Long enough (about a second of meta-steps) that each signal lands mid-run.
SIGNAL_RUN = dict(num_train_steps=2000, checkpoint_every_steps=2000,
                  log_every_steps=10, eval_every_steps=2000)


def wait_for_logged_step(proc, log_path, after):
  """Waits until the run has logged a train step > `after`."""
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and proc.poll() is None:
    with open(log_path, errors='replace') as f:
      steps = [int(s) for s in re.findall(r'\[(\d+)\] train/', f.read())]
    if steps and max(steps) > after:
      return
    time.sleep(0.005)
  raise AssertionError(f'the run logged no step after {after}')


def test_sigterm_and_sigint_save_the_step_reached_and_rerun_is_exact(
    tmp_path):
  """SIGTERM, then SIGINT on the rerun: each saves the step it reached and
  exits 128 + signal with one line; the final rerun ends bit-identical to an
  uninterrupted run, and no step is written twice to TensorBoard.

  Pins: the signal ignored (nothing saved, exit 143/-15, no line), the save
  skipped or of another step, a resume that replays logged steps into a
  second event file (duplicates), a resume that is not exact.
  """
  reference = str(tmp_path / 'reference')
  train.train_and_evaluate(quick_config(**SIGNAL_RUN), reference)

  workdir = str(tmp_path / 'run')
  saved = 0
  for sig in (signal.SIGTERM, signal.SIGINT):
    log_path = str(tmp_path / f'{sig.name}.log')
    with open(log_path, 'wb') as log:
      # --verbosity=0: absl's log lines, the per-step metrics waited for.
      proc = subprocess.Popen(command(workdir, '--verbosity=0', **SIGNAL_RUN),
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
      wait_for_logged_step(proc, log_path, saved)
      proc.send_signal(sig)
      code = proc.wait(timeout=300)
    with open(log_path, errors='replace') as f:
      text = f.read()
    assert code == 128 + sig, text[-3000:]
    match = re.fullmatch(
        rf'maml_plugin: {sig.name} received: saved step (\d+); run the same '
        'command to resume', last_line(text))
    assert match, text[-3000:]
    step = int(match[1])
    assert saved < step < SIGNAL_RUN['num_train_steps']
    assert steps_in(workdir)[-1] == step
    assert checkpointing.verify_checksums(
        os.path.join(workdir, 'checkpoints', str(step)))
    assert 'Traceback' not in text
    saved = step

  proc = subprocess.run(command(workdir, **SIGNAL_RUN), cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert_same_checkpoint(workdir, reference, SIGNAL_RUN['num_train_steps'])
  with open(os.path.join(workdir, 'evaluation.json')) as f:
    got = json.load(f)
  with open(os.path.join(reference, 'evaluation.json')) as f:
    assert got == json.load(f)
  got, want = run_scalars(workdir), run_scalars(reference)
  assert got.keys() == want.keys()
  for key, values in got.items():
    assert len(values) == 1, f'{key} written {len(values)} times'
    np.testing.assert_array_equal(values[0], want[key][0], err_msg=str(key))


# One run per workdir.


def test_two_runs_started_together_one_refuses_naming_the_holder(tmp_path):
  """Pins: no lock (both train, mixed checkpoints, orbax tracebacks), a
  lock that does not name its holder, a refusal that is not one line.

  2,000 steps: the lock is taken after the step is compiled (the memory
  check comes first), so a run that trains for a moment only can end
  before the other, compiling more slowly on a loaded machine, reaches
  the lock, and that one then finds a finished run (exit 0, rightly).
  """
  workdir = str(tmp_path / 'run')
  long = dict(num_train_steps=2000, checkpoint_every_steps=1000,
              eval_every_steps=1000)
  procs = [subprocess.Popen(command(workdir, **long), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for _ in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  codes = [p.returncode for p in procs]
  assert sorted(codes) == [0, 1], [o[1][-2000:] for o in outputs]
  winner, loser = (procs[codes.index(0)], outputs[codes.index(1)][1])
  assert re.fullmatch(
      rf'maml_plugin: workdir {re.escape(workdir)} is in use by process '
      rf'{winner.pid} on \S+ \(since [^)]+\) \(lock '
      rf'{re.escape(os.path.join(workdir, "lock"))}\); wait for it to end, '
      'stop it, or use another --workdir', last_line(loser)), loser
  assert 'Traceback' not in loser
  assert steps_in(workdir) == [1000, 2000]
  for step in steps_in(workdir):
    assert checkpointing.verify_checksums(
        os.path.join(workdir, 'checkpoints', str(step)))
    checkpoint_arrays(workdir, step)  # Reads.


_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b'{"pid": %d, "host": "h", "since": "t"}' % os.getpid())
print('held', flush=True)
time.sleep(60)
"""


def test_lock_held_elsewhere_refuses_and_a_stale_one_is_taken_over(
    tmp_path, caplog):
  """Pins: a lock not checked, a holder not named, a stale lock (its
  process gone) refused forever or taken over silently, a lock not
  released (the next run refused)."""
  workdir = str(tmp_path)
  path = os.path.join(workdir, 'lock')
  holder = subprocess.Popen([sys.executable, '-c', _HOLD, path],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == 'held\n'
    with pytest.raises(workdir_lib.WorkdirError) as err:
      with workdir_lib.lock(workdir):
        pass
    assert str(err.value).startswith(
        f'workdir {workdir} is in use by process {holder.pid} on h (since '
        't)'), err.value
  finally:
    holder.kill()
    holder.wait()
  caplog.set_level(logging.WARNING)
  with workdir_lib.lock(workdir):  # Its process is gone: taken over.
    with open(path) as f:
      assert json.load(f)['pid'] == os.getpid()
  assert f'Taking over the lock {path} left by process {holder.pid}' in (
      caplog.text)
  with open(path) as f:
    assert f.read() == ''  # Released: the next run finds no holder.
  caplog.clear()
  with workdir_lib.lock(workdir):
    pass
  assert 'Taking over' not in caplog.text


@pytest.mark.parametrize('module', ['maml_plugin.main',
                                    'maml_plugin.evaluate'])
def test_workdir_that_is_a_file_stops_before_training_in_one_line(
    tmp_path, module):
  """Pins: main's 'cannot write .../afile/lock: File exists' after
  building the run, evaluate's 'no checkpoint in .../afile: train first'."""
  path = tmp_path / 'afile'
  path.write_text('mine\n')
  proc = subprocess.run(
      [sys.executable, '-m', module, '--config=configs/maml_sine.py:quick',
       f'--workdir={path}'], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert (proc.stdout + proc.stderr).strip() == (
      f'maml_plugin: workdir {path} is a file, not a directory: use '
      'another --workdir'), proc.stderr
  assert path.read_text() == 'mine\n'


def test_workdir_under_a_file_is_named_by_the_library_calls(tmp_path):
  """`train_and_evaluate` and `evaluate` (no command line) say it too,
  naming the file; pins 'cannot write .../afile/run/lock: Not a
  directory'."""
  path = tmp_path / 'afile'
  path.write_text('')
  workdir = str(path / 'run')
  for call in (train.train_and_evaluate, evaluate.evaluate):
    with pytest.raises(workdir_lib.WorkdirError) as err:
      call(quick_config(), workdir)
    assert str(err.value) == (f'workdir {workdir}: {path} is a file, not a '
                              'directory: use another --workdir')


# Resume under the config that made the checkpoint.


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished 100-step run, checkpoints at 50 and 100."""
  workdir = str(tmp_path_factory.mktemp('finished'))
  train.train_and_evaluate(quick_config(), workdir)
  return workdir


def copy_of(finished, tmp_path):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(finished, workdir)
  return workdir


@pytest.mark.parametrize('field,value,saved', [
    ('inner_lr', 0.05, 0.01),
    ('meta_batch_size', 10, 25),
    ('train_step', 'fomaml', 'maml'),
    ('train_step', 'anil', 'maml'),
    ('seed', 7, 0),
    ('hidden_sizes', (20, 20), [40, 40]),
])
def test_resume_under_a_changed_training_field_stops_naming_it(
    finished, tmp_path, field, value, saved):
  """Pins: a field that changes training accepted on resume (the old
  behaviour: silent, the saved key winning over a new seed), a message
  without the field, the old or the new value, a workdir changed."""
  workdir = copy_of(finished, tmp_path)
  before = snapshot(workdir)
  config = quick_config(num_train_steps=150)
  config[field] = value
  with pytest.raises(workdir_lib.WorkdirError) as err:
    train.train_and_evaluate(config, workdir)
  assert str(err.value) == (
      f"config.{field}={json.loads(json.dumps(value))!r} differs from the "
      f"checkpoints' {saved!r} (step 100), and it changes training: use a "
      'fresh --workdir, or resume with --allow_config_change to change it '
      'on purpose')
  assert snapshot(workdir) == before


def test_run_length_logging_evaluation_and_device_count_may_change(
    finished, tmp_path, caplog):
  """Run length, logging, evaluation and checkpoint cadence change freely;
  a device count other than the checkpoints' is logged and recorded; a
  deliberate change (`allow_config_change`) is recorded; the time-based
  checkpoint saves at chunk boundaries between the step-based ones.

  Pins: a free field refused, `changes_training` ignored, the device note
  or the record missing, `checkpoint_every_secs` not read.
  """
  workdir = copy_of(finished, tmp_path)
  with open(os.path.join(workdir, 'config.json')) as f:
    document = json.load(f)
  assert document['num_devices'] == 1 and document['changes'] == []
  document['num_devices'] = 2  # As if trained on two devices so far.
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(document, f)
  caplog.set_level(logging.WARNING)
  config = quick_config(
      num_train_steps=130, log_every_steps=10, eval_every_steps=130,
      checkpoint_every_steps=130, num_eval_tasks=10, eval_num_inner_steps=3,
      checkpoint_every_secs=1e-9, max_checkpoints_to_keep=10,
      steps_per_call=10, inner_lr=0.02)
  state = train.train_and_evaluate(config, workdir, allow_config_change=True)
  assert int(state.step) == 130
  assert steps_in(workdir) == [50, 100, 110, 120, 130]
  assert ('Resuming at step 100 on 1 devices; the checkpoints were trained '
          'on 2.') in caplog.text
  assert ('config.inner_lr changed from 0.01 to 0.02 at step 100 '
          '(--allow_config_change)') in caplog.text
  with open(os.path.join(workdir, 'config.json')) as f:
    document = json.load(f)
  assert document['config']['num_train_steps'] == 130
  assert document['num_devices'] == 1
  assert document['changes'] == [
      {'step': 100, 'field': 'inner_lr', 'old': 0.01, 'new': 0.02},
      {'step': 100, 'field': 'num_devices', 'old': 2, 'new': 1}]


def test_workdir_from_before_saved_configs_resumes_and_saves_it(
    finished, tmp_path, caplog):
  """Pins: a workdir with checkpoints and no config.json refused, or left
  without one (so the next resume is unchecked)."""
  workdir = copy_of(finished, tmp_path)
  os.remove(os.path.join(workdir, 'config.json'))
  caplog.set_level(logging.WARNING)
  train.train_and_evaluate(quick_config(), workdir)
  assert 'has checkpoints but no config.json' in caplog.text
  config = quick_config()
  config.inner_lr = 0.05
  with pytest.raises(workdir_lib.WorkdirError, match='config.inner_lr=0.05'):
    train.train_and_evaluate(config, workdir)


# A bad checkpoint.


def array_file(workdir, step):
  """The biggest file of a checkpoint (its array data)."""
  data = os.path.join(workdir, 'checkpoints', str(step), 'default')
  return max((os.path.join(r, n) for r, _, ns in os.walk(data) for n in ns),
             key=os.path.getsize)


def test_unreadable_latest_falls_back_named_and_resumes_exactly(
    finished, tmp_path, caplog):
  """Latest truncated: the log names it, the run resumes from step 50, sets
  step 100 aside (nothing deleted) and saves an identical step 100; the
  replayed steps 51-100 are not written to TensorBoard a second time.

  Pins: no fallback (the run stops), the bad checkpoint deleted or not
  named, the fallback to the wrong step, replayed steps logged twice.
  """
  workdir = copy_of(finished, tmp_path)
  with open(array_file(workdir, 100), 'r+b') as f:
    f.truncate(7)
  caplog.set_level(logging.WARNING)
  train.train_and_evaluate(quick_config(), workdir)
  bad = os.path.join(workdir, 'checkpoints', '100')
  assert f'Checkpoint {bad} cannot be read' in caplog.text
  assert (f'Resuming from {os.path.join(workdir, "checkpoints", "50")}, the '
          f'newest checkpoint that reads; not used: {bad} (kept).'
          ) in caplog.text
  aside = glob.glob(bad + '.unreadable-*')
  assert len(aside) == 1 and os.path.getsize(
      os.path.join(aside[0], 'sha256.json'))
  assert_same_checkpoint(workdir, finished, 100)
  scalars = run_scalars(workdir)
  assert ('eval/mse_step0', 100) in scalars
  assert all(len(v) == 1 for v in scalars.values()), [
      k for k, v in scalars.items() if len(v) > 1]


def test_bit_flip_is_detected_by_the_digest_and_restore_falls_back(
    finished, tmp_path, caplog):
  """One flipped bit in the middle of the array data: orbax reads it
  without complaint (one leaf differs); the digest names the file and the
  restore takes step 50, renaming nothing (an evaluation's restore).

  Pins: no digest, a digest not checked on restore, the fallback that
  renames or deletes in a read-only restore.
  """
  workdir = copy_of(finished, tmp_path)
  path = array_file(workdir, 100)
  with open(path, 'r+b') as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 1
    f.seek(0)
    f.write(data)
  with pytest.raises(checkpointing.CheckpointError) as err:
    checkpointing.verify_checksums(os.path.join(workdir, 'checkpoints', '100'))
  assert str(err.value) == (f'{path} differs from its sha256 in sha256.json '
                            '(bit rot, or a partial copy)')
  before = snapshot(workdir)
  config = quick_config()
  problem = train.create_problem(config)
  tx = train.create_optimizer(config)
  state = train.create_train_state(
      problem, train.create_algorithm(config, problem, tx), tx)
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  caplog.set_level(logging.WARNING)
  state, _ = checkpointing.restore_latest(manager, state, jax.random.key(0))
  manager.close()
  assert int(state.step) == 50
  assert f'{path} differs from its sha256' in caplog.text
  assert snapshot(workdir) == before


# I/O failures.

_IN_TMPFS = """
set -e
mount -t tmpfs -o size={size} tmpfs {mnt}
{copy}
{mount_ro}
set +e
"$@" >/dev/null
code=$?
ls -A {mnt}/run/checkpoints
exit $code
"""


def run_in_mount(tmp_path, argv, *, size='176k', source=None,
                 read_only=False):
  """Runs `argv` with `tmp_path/mnt` a small tmpfs (private mount
  namespace), holding a copy of `source` as mnt/run, read-only if asked;
  its stdout is the names in mnt/run/checkpoints (the run's own stdout,
  its progress lines, is dropped)."""
  mnt = str(tmp_path / 'mnt')
  os.makedirs(mnt)
  script = _IN_TMPFS.format(
      size=size, mnt=mnt,
      copy=f'cp -a {source} {mnt}/run' if source else '',
      mount_ro=f'mount -o remount,ro {mnt}' if read_only else '')
  return subprocess.run(['unshare', '--mount', 'sh', '-c', script, 'sh',
                         *argv], cwd=REPO, capture_output=True, text=True,
                        timeout=300), os.path.join(mnt, 'run')


def test_full_disk_stops_in_one_line_naming_the_checkpoint(tmp_path):
  """A 176 KiB tmpfs holds one checkpoint, not two: the second save fails.

  Pins: orbax's tracebacks (120 lines) instead of one line, the
  temporary folder left behind, the cause not named.
  """
  workdir = str(tmp_path / 'mnt' / 'run')
  proc, _ = run_in_mount(tmp_path, command(workdir, log_every_steps=100,
                                           num_train_steps=200))
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert last_line(proc.stderr) == (
      f'maml_plugin: cannot write {workdir}/checkpoints/100: No space left '
      'on device; the complete checkpoints (50) are intact'), proc.stderr
  assert 'Traceback' not in proc.stderr, proc.stderr  # All of it, if it fails.
  assert proc.stdout.split() == ['50']  # No temporary folder left.


def test_read_only_workdir_stops_in_one_line_naming_the_path(
    finished, tmp_path):
  """Pins: TensorFlow's 44-line PermissionDeniedError, a path not named."""
  workdir = str(tmp_path / 'mnt' / 'run')
  proc, _ = run_in_mount(tmp_path, command(workdir, num_train_steps=150),
                         size='4m', source=finished, read_only=True)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert last_line(proc.stderr) == (
      f'maml_plugin: cannot write {workdir}/lock: Read-only file system'
  ), proc.stderr
  assert 'Traceback' not in proc.stderr
  assert proc.stdout.split() == ['100', '50']


def test_atomic_write_removes_its_temporary_file_and_names_the_path(
    tmp_path):
  """Pins: a stray temporary file after a failed write, an error naming
  the temporary file, outputs created 0600."""
  path = str(tmp_path / 'evaluation.json')

  def fail(tmp):
    with open(tmp, 'w') as f:
      f.write('{')
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

  with pytest.raises(workdir_lib.WorkdirError) as err:
    workdir_lib.write_atomic(path, fail)
  assert str(err.value) == f'cannot write {path}: No space left on device'
  assert os.listdir(tmp_path) == []
  mask = os.umask(0o022)
  try:
    workdir_lib.write_text(path, '{}\n')
  finally:
    os.umask(mask)
  assert os.listdir(tmp_path) == ['evaluation.json']
  assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
