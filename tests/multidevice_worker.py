"""Runs under XLA_FLAGS=--xla_force_host_platform_device_count=N (test helper).

  python tests/multidevice_worker.py WORKDIR > result.json

Prints JSON: the device count; the meta-gradient and meta-loss of one
meta-batch computed with its task axis sharded over all devices; the same on
one device; how the sharded batch was split; the final params of a short
`train_and_evaluate` on all devices; and the config error for a meta-batch
that does not divide by the device count; and iMAML's meta-step (its CG
solve under `vmap`) on one device and with the task axis sharded.
"""

import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from configs import maml_sine
from maml_plugin import config_validation
from maml_plugin import core
from maml_plugin import distributed
from maml_plugin import train


def small_config(**overrides):
  config = maml_sine.get_config('maml,quick')
  config.update(dict(meta_batch_size=24, num_train_steps=50,
                     log_every_steps=50, eval_every_steps=50,
                     checkpoint_every_steps=50, num_eval_tasks=10,
                     num_plot_tasks=0))
  config.update(overrides)
  return config


def meta_gradients(config):
  problem = train.create_problem(config)
  batch = problem.tasks.train_batch(jax.random.key(7), config.meta_batch_size)
  objective = jax.value_and_grad(functools.partial(
      core.maml_loss, problem.loss_fn, inner_lr=config.inner_lr,
      num_steps=config.num_inner_steps))
  one = jax.devices()[0]
  loss1, grads1 = jax.jit(objective)(jax.device_put(problem.init_params, one),
                                     jax.device_put(batch, one))
  mesh = distributed.task_mesh()
  sharded = jax.device_put(batch, distributed.task_sharding(mesh))
  params = distributed.replicate(problem.init_params, mesh)
  lossn, gradsn = jax.jit(objective)(params, sharded)
  leaf = sharded['support']['x']
  return {
      'loss_one_device': float(loss1), 'loss_sharded': float(lossn),
      'grads_one_device': [np.asarray(g).tolist()
                           for g in jax.tree.leaves(grads1)],
      'grads_sharded': [np.asarray(g).tolist()
                        for g in jax.tree.leaves(gradsn)],
      'shard_task_counts': sorted(s.data.shape[0]
                                  for s in leaf.addressable_shards),
      'grads_replicated': all(g.sharding.is_fully_replicated
                              for g in jax.tree.leaves(gradsn)),
  }


def imaml_updates():
  """iMAML's train step on one meta-batch, on one device and sharded."""
  config = small_config(train_step='imaml', prox_lambda=2.0, num_cg_steps=3)
  problem = train.create_problem(config)
  tx = train.create_optimizer(config)
  algorithm = train.create_algorithm(config, problem, tx)
  state = train.create_train_state(problem, algorithm, tx)
  batch = problem.tasks.train_batch(jax.random.key(7), config.meta_batch_size)
  step = jax.jit(algorithm.train_step)
  one = jax.devices()[0]
  state1, _ = step(jax.device_put(state, one), jax.device_put(batch, one),
                   jax.random.key(0))
  mesh = distributed.task_mesh()
  staten, _ = step(distributed.replicate(state, mesh),
                   jax.device_put(batch, distributed.task_sharding(mesh)),
                   jax.random.key(0))
  return {key: [np.asarray(p).tolist() for p in jax.tree.leaves(s.params)]
          for key, s in (('imaml_one_device', state1),
                         ('imaml_sharded', staten))}


def main(workdir):
  out = {'device_count': jax.device_count()}
  out.update(meta_gradients(small_config()))
  out.update(imaml_updates())
  state = train.train_and_evaluate(small_config(), workdir)
  out['trained_params'] = [np.asarray(p).tolist()
                           for p in jax.tree.leaves(state.params)]
  out['trained_step'] = int(state.step)
  try:
    config_validation.validate(small_config(meta_batch_size=25),
                               num_devices=distributed.num_task_devices())
    out['indivisible_error'] = None
  except config_validation.ConfigError as e:
    out['indivisible_error'] = str(e)
  print(json.dumps(out))


if __name__ == '__main__':
  main(sys.argv[1])
