"""Two processes on localhost (jax.distributed, CPU): one of them SIGKILLed
ends the other in one line; a rerun resumes from the newest checkpoint and
ends equal to one process."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from configs import maml_sine
from maml_plugin import checkpointing
from maml_plugin import train
from maml_plugin import algorithms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {'meta_batch_size': 24, 'num_train_steps': 50,
             'checkpoint_every_steps': 10, 'num_eval_tasks': 10,
             'num_plot_tasks': 0}


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def config():
  c = maml_sine.get_config('maml,quick')
  c.update(OVERRIDES)
  return c


def start(workdir, port, process_id, out, err=subprocess.STDOUT):
  """`python -m maml_plugin.main` as process `process_id` of 2."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return subprocess.Popen(
      [sys.executable, '-m', 'maml_plugin.main',
       '--config=configs/maml_sine.py:maml,quick', f'--workdir={workdir}',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       f'--process_id={process_id}']
      + [f'--config.{k}={v}' for k, v in OVERRIDES.items()],
      cwd=REPO, env=env, stdout=out, stderr=err)


def run_both(workdir, logs):
  """Both processes to the end; returns process 0's output."""
  port = free_port()
  procs = []
  for process_id in (0, 1):
    log = open(logs / f'process{process_id}.out', 'wb')
    procs.append((start(workdir, port, process_id, log), log))
  for proc, log in procs:
    code = proc.wait(timeout=300)
    log.close()
    assert code == 0, (logs / 'process1.out').read_text()[-3000:]
  return (logs / 'process0.out').read_text()


def test_two_processes_one_killed_and_rerun_match_one_process(tmp_path):
  """Process 1 SIGKILLed after the first checkpoint: process 0 stops within
  seconds, exit 75, with one line on stderr naming process 1 (JAX's own
  report was ~70 lines of Gloo, heartbeat and abort messages, exit -6, up
  to a minute later); the same two commands again resume from the newest
  checkpoint and finish the run, which equals one process's. (One test, a
  kill and a rerun, instead of an uninterrupted run besides: each run of
  two processes takes a minute or more on 2 busy cores.)"""
  workdir = str(tmp_path / 'two')
  port = free_port()
  out, err = open(tmp_path / 'out0', 'wb'), open(tmp_path / 'err0', 'wb')
  survivor = start(workdir, port, 0, out, err)
  victim = start(workdir, port, 1, subprocess.DEVNULL)
  first = os.path.join(workdir, 'checkpoints',
                       str(OVERRIDES['checkpoint_every_steps']))
  deadline = time.monotonic() + 240
  while not os.path.isdir(first):
    assert time.monotonic() < deadline and survivor.poll() is None
    time.sleep(0.02)
  victim.send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  code = survivor.wait(timeout=120)
  took = time.monotonic() - killed_at
  victim.wait()
  out.close()
  err.close()
  stderr = (tmp_path / 'err0').read_text()
  assert code == 75, stderr
  log = os.path.join(workdir, 'process_0.log')
  assert re.fullmatch(
      r'maml_plugin: process 1 of 2 was lost \([^)]*\); the checkpoints '
      r'\([\d, ]+\) are intact: rerun every process with the same flags '
      r'to resume \(full log of process 0: ' + re.escape(log) + r'\)\n',
      stderr), stderr
  assert took < 30, f'process 0 took {took:.0f} s to stop'
  steps = sorted(int(n) for n in os.listdir(os.path.dirname(first))
                 if n.isdigit())
  assert steps[-1] < OVERRIDES['num_train_steps'], 'killed after the end'

  output = run_both(workdir, tmp_path)
  assert (f'Meta-training from step {steps[-1]} to 50 (resumed from its '
          'checkpoint)') in output, output
  # Only the first process writes event files (CLU) and the report: one
  # file for each of its two runs.
  events = [n for n in os.listdir(workdir) if n.startswith('events.out')]
  assert len(events) == 2, events

  single = train.train_and_evaluate(config(), str(tmp_path / 'one'))
  fresh = algorithms.MetaTrainState.create(
      train.create_problem(config()).init_params,
      train.create_optimizer(config()))
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  two, _ = checkpointing.restore_latest(manager, fresh, jax.random.key(0))
  manager.close()
  assert int(two.step) == int(single.step) == 50
  for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(single)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5)
