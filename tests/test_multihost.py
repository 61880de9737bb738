"""Two processes on localhost (jax.distributed, CPU) equal one process."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from configs import maml_sine
from maml_plugin import checkpointing
from maml_plugin import train
from maml_plugin import train_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {'meta_batch_size': 24, 'num_train_steps': 50,
             'num_eval_tasks': 10, 'num_plot_tasks': 0}


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def config():
  c = maml_sine.get_config('maml,quick')
  c.update(OVERRIDES)
  return c


def test_two_processes_match_one_process(tmp_path):
  workdir = str(tmp_path / 'two')
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  procs = []
  for process_id in (0, 1):
    log = open(tmp_path / f'process{process_id}.log', 'wb')
    procs.append((subprocess.Popen(
        [sys.executable, '-m', 'maml_plugin.main',
         '--config=configs/maml_sine.py:maml,quick', f'--workdir={workdir}',
         f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
         f'--process_id={process_id}']
        + [f'--config.{k}={v}' for k, v in OVERRIDES.items()],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
  for proc, log in procs:
    code = proc.wait(timeout=300)
    log.close()
    assert code == 0, (tmp_path / 'process1.log').read_text()[-3000:]

  # Only the first process writes event files (CLU) and the report.
  events = [n for n in os.listdir(workdir) if n.startswith('events.out')]
  assert len(events) == 1, events

  single = train.train_and_evaluate(config(), str(tmp_path / 'one'))
  fresh = train_steps.MetaTrainState.create(
      train.create_problem(config()).init_params,
      train.create_optimizer(config()))
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  two, _ = checkpointing.restore_latest(manager, fresh, jax.random.key(0))
  manager.close()
  assert int(two.step) == int(single.step) == 50
  for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(single)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5)
