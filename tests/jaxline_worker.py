"""Runs `MetaExperiment` through jaxline's own train and evaluate (test helper).

Imported by tests/test_jaxline_experiment.py (one device, in process) and
run as a script under XLA_FLAGS=--xla_force_host_platform_device_count=2::

  python tests/jaxline_worker.py > result.json

It records the keys jaxline hands `step` and every scalar written, replays
the same steps with the pure registered train step (the documented key
contract, restated independently), and compares a mid-run snapshot,
restored by jaxline's checkpointer and evaluated, with the replay.
"""

import collections
import json
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import maml_sine
from maml_plugin import actions
from maml_plugin import jaxline_experiment
from maml_plugin import train
from jaxline import train as jaxline_train
from jaxline import utils as jaxline_utils
# pylint: enable=g-import-not-at-top,wrong-import-position

NUM_STEPS = 6
SNAPSHOT_STEP = 3


def small_config():
  config = maml_sine.get_config('maml,quick')
  config.update(dict(num_train_steps=NUM_STEPS, meta_batch_size=8,
                     steps_per_call=1, log_every_steps=1,
                     eval_every_steps=SNAPSHOT_STEP,
                     checkpoint_every_steps=SNAPSHOT_STEP, num_eval_tasks=10,
                     eval_num_inner_steps=2, num_plot_tasks=0))
  return config


class RecordingWriter:
  """jaxline's writer protocol; counts every (name, step) written."""

  def __init__(self):
    self._lock = threading.Lock()  # jaxline writes from a worker thread.
    self.counts = collections.Counter()
    self.values = {}

  def write_scalars(self, global_step, scalars):
    with self._lock:
      for name, value in scalars.items():
        self.counts[(name, int(global_step))] += 1
        self.values[(name, int(global_step))] = float(value)


class RecordingExperiment(jaxline_experiment.MetaExperiment):
  """Keeps the keys and steps jaxline hands `step`."""

  handed = []

  def step(self, *, global_step, rng, writer):
    type(self).handed.append((np.asarray(jax.device_get(global_step)),
                              np.asarray(jax.device_get(rng))))
    return super().step(global_step=global_step, rng=rng, writer=writer)


def _flags_parsed():
  # jaxline reads its own absl flags; tests have no command line.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def jaxline_config(config=None):
  jl = jaxline_experiment.get_config(config or small_config())
  jl.log_tensors_interval = NUM_STEPS  # Keep the log short.
  return jl


def run_train(jl, history=None):
  """jaxline's `train.train` with its in-memory checkpointer.

  Starts from an empty checkpoint series, or from `history` (snapshots).
  Returns the experiment, the writer and the snapshots saved.
  """
  _flags_parsed()
  jaxline_utils.GLOBAL_CHECKPOINT_DICT.clear()
  if history is not None:
    jaxline_utils.GLOBAL_CHECKPOINT_DICT['latest'] = jaxline_utils.CheckpointNT(
        threading.local(), list(history))
  RecordingExperiment.handed = []
  writer = RecordingWriter()
  checkpointer = jaxline_utils.InMemoryCheckpointer(jl, 'train')
  jaxline_train.train(RecordingExperiment, jl, checkpointer, writer)
  series = jaxline_utils.GLOBAL_CHECKPOINT_DICT['latest']
  experiment = series.active.state.experiment_module
  return experiment, writer, list(series.history)


def run_evaluate(jl, snapshot):
  """jaxline's `train.evaluate`, one off, on `snapshot` as the latest."""
  _flags_parsed()
  jaxline_utils.GLOBAL_CHECKPOINT_DICT.clear()
  jaxline_utils.GLOBAL_CHECKPOINT_DICT['latest'] = jaxline_utils.CheckpointNT(
      threading.local(), [snapshot])
  jl = jl.copy_and_resolve_references()
  jl.one_off_evaluate = True
  writer = RecordingWriter()
  checkpointer = jaxline_utils.InMemoryCheckpointer(jl, 'eval')
  jaxline_train.evaluate(jaxline_experiment.MetaExperiment, jl, checkpointer,
                         writer, jaxline_mode='eval')
  restored = jaxline_utils.GLOBAL_CHECKPOINT_DICT[
      'latest'].active.state.experiment_module
  return restored, writer


def snapshot_at(history, step):
  return next(s for s in history if s.pickle_nest.global_step == step)


def replay(config, handed):
  """The train states after each handed step, by the pure train step:
  device d's key splits into (task key, step key); d's share of the
  meta-batch comes from its task key; the step gets device 0's step key."""
  problem = train.create_problem(config)
  tx = train.create_optimizer(config)
  algorithm = train.create_algorithm(config, problem, tx)
  state = train.create_train_state(problem, algorithm, tx)
  train_step = jax.jit(algorithm.train_step)
  states = [state]
  for _, keys in handed:
    per_device = config.meta_batch_size // len(keys)
    pairs = [jax.random.split(jax.random.wrap_key_data(k)) for k in keys]
    shares = [problem.tasks.train_batch(p[0], per_device) for p in pairs]
    batch = jax.tree.map(lambda *xs: jnp.concatenate(xs), *shares)
    state, _ = train_step(state, batch, pairs[0][1])
    states.append(state)
  return states, train.create_evaluator(config, problem, algorithm=algorithm)


def evaluation_scalars(evaluator, params):
  return actions.evaluation_scalars(evaluator.metric, evaluator(params))


def leaves(state):
  return [np.asarray(x).tolist() for x in jax.tree.leaves(state)]


def main():
  config = small_config()
  jl = jaxline_config(config)
  experiment, writer, history = run_train(jl)
  handed = RecordingExperiment.handed
  states, evaluator = replay(config, handed)
  restored, eval_writer = run_evaluate(jl, snapshot_at(history,
                                                       SNAPSHOT_STEP))
  out = {
      'device_count': jax.device_count(),
      'key_shapes': [list(keys.shape) for _, keys in handed],
      'keys_distinct': [len({k.tobytes() for k in keys}) == len(keys)
                        for _, keys in handed],
      'global_steps': [steps.tolist() for steps, _ in handed],
      'max_writes': max(writer.counts.values()),
      'written': sorted({name for name, _ in writer.counts}),
      'final_params': leaves(experiment.state.params),
      'replay_params': leaves(states[-1].params),
      'restored_params': leaves(restored.state.params),
      'replay_params_at_snapshot': leaves(states[SNAPSHOT_STEP].params),
      'restored_replicated': all(
          x.sharding.is_fully_replicated
          and len(x.sharding.device_set) == jax.device_count()
          for x in jax.tree.leaves(restored.state)),
      'eval_written': {name: value for (name, step), value
                       in eval_writer.values.items() if step == SNAPSHOT_STEP},
      'replay_eval': evaluation_scalars(evaluator,
                                        states[SNAPSHOT_STEP].params),
  }
  try:
    experiment.step(global_step=None, rng=np.zeros((2, 2), np.uint32),
                    writer=None)
    out['equal_keys_error'] = None
  except ValueError as e:
    out['equal_keys_error'] = str(e)
  print(json.dumps(out))


if __name__ == '__main__':
  main()
