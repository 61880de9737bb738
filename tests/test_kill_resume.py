"""A run SIGKILLed at random moments and restarted ends bit-identical.

The run is the real command line (`tests/kill_target.py` is
`python -m maml_plugin.main` with each checkpoint commit slowed down, so that
a kill can land inside a save). It is killed several times, during meta-steps
and during saves, restarted with the same command each time, and its final
params, optimizer state, evaluation report and every train/eval scalar are
compared with those of an uninterrupted run.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from tests import event_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP_MARK = '.orbax-checkpoint-tmp'
NUM_STEPS = 200
EVERY = 50
SAVE_DELAY = 0.4


def command(workdir):
  return [sys.executable, os.path.join('tests', 'kill_target.py'),
          '--config=configs/maml_sine.py:maml,quick', f'--workdir={workdir}',
          f'--config.num_train_steps={NUM_STEPS}',
          f'--config.checkpoint_every_steps={EVERY}',
          f'--config.log_every_steps={EVERY}',
          '--config.eval_every_steps=100', '--config.num_eval_tasks=20',
          '--config.num_plot_tasks=0', '--config.max_checkpoints_to_keep=2']


def start(workdir, log):
  env = dict(os.environ, KILL_TEST_SAVE_DELAY=str(SAVE_DELAY))
  return subprocess.Popen(command(workdir), cwd=REPO, env=env, stdout=log,
                          stderr=subprocess.STDOUT)


def checkpoint_names(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  return os.listdir(directory) if os.path.isdir(directory) else []


def complete_steps(workdir):
  return sorted(int(n) for n in checkpoint_names(workdir) if n.isdigit())


def saving(workdir):
  """Steps being saved right now (their temporary folder exists)."""
  return [n for n in checkpoint_names(workdir) if TMP_MARK in n]


def wait_for(proc, condition, timeout=240):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition() or proc.poll() is not None:
      return condition()
    time.sleep(0.01)
  raise AssertionError('the run made no progress')


def final_checkpoint(workdir):
  path = os.path.join(workdir, 'checkpoints', str(NUM_STEPS), 'default')
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path)


def test_killed_and_restarted_run_equals_uninterrupted_run(tmp_path):
  seed = random.randrange(2**32)
  rand = random.Random(seed)
  note = f'(random seed {seed})'
  reference = str(tmp_path / 'reference')
  with open(tmp_path / 'reference.log', 'wb') as log:
    assert start(reference, log).wait(timeout=300) == 0, note

  workdir = str(tmp_path / 'killed')
  kills = []
  with open(tmp_path / 'killed.log', 'wb') as log:
    for moment in ('save', 'step', 'save'):
      before = complete_steps(workdir)
      last = before[-1] if before else 0
      if last >= NUM_STEPS - EVERY:
        break
      proc = start(workdir, log)
      if moment == 'save':
        # Inside the next save: its folder is written, not yet renamed.
        hit = wait_for(proc, lambda: any(
            int(n.split('.')[0]) > last for n in saving(workdir)))
        time.sleep(rand.uniform(0, SAVE_DELAY / 2))
      else:
        # Between saves, while meta-steps run.
        hit = wait_for(proc, lambda: complete_steps(workdir)[-1:] > [last]
                       and not saving(workdir))
        time.sleep(rand.uniform(0, 0.3))
      state = 'saving' if saving(workdir) else 'training'
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      assert hit, f'run ended before the kill {note}'
      kills.append((moment, state, complete_steps(workdir), saving(workdir)))
    assert any(s == 'saving' for _, s, _, _ in kills), (kills, note)
    # A kill during a save leaves only a temporary folder for that step;
    # the complete checkpoints before it stay the latest.
    for _, state, steps, tmp in kills:
      if state == 'saving':
        assert tmp and all(int(t.split('.')[0]) > (steps or [0])[-1]
                           for t in tmp), (kills, note)
    proc = start(workdir, log)
    assert proc.wait(timeout=300) == 0, (kills, note)

  got, want = final_checkpoint(workdir), final_checkpoint(reference)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=note)
  assert int(got['state']['step']) == NUM_STEPS

  with open(os.path.join(workdir, 'evaluation.json')) as f:
    got_report = json.load(f)
  with open(os.path.join(reference, 'evaluation.json')) as f:
    assert got_report == json.load(f), note

  got_scalars = event_files.read_scalars(workdir)
  want_scalars = event_files.read_scalars(reference)
  tags = {k for k in want_scalars if k[0].startswith(('train/', 'eval/'))}
  assert tags and tags <= set(got_scalars), note
  for key in tags:
    for value in got_scalars[key]:  # A replayed step wrote it again: same.
      np.testing.assert_array_equal(value, want_scalars[key][0],
                                    err_msg=f'{key} {note}')
