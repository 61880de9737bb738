"""Meta-steps/s of the fused train chunk with the task axis over N devices.

  python benchmarks/multidevice.py                 # 1, 2, 4 forced CPU devices
  python benchmarks/multidevice.py --devices=1,8 --meta_batch_size=32

Each device count runs in its own process (XLA_FLAGS fixes the CPU device
count at start-up). On CPU the forced devices share the machine's cores, so
this measures correctness and overhead, not speed-up. On an accelerator
host, `--devices=0` uses the real devices as they are.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(meta_batch_size: int, steps_per_call: int, calls: int) -> dict:
  sys.path.insert(0, REPO)
  import jax  # pylint: disable=g-import-not-at-top
  from configs import maml_sine
  from maml_plugin import distributed
  from maml_plugin import train
  from maml_plugin import algorithms

  config = maml_sine.get_config()
  config.meta_batch_size = meta_batch_size
  problem = train.create_problem(config)
  tx = train.create_optimizer(config)
  state = algorithms.MetaTrainState.create(problem.init_params, tx)
  rng = jax.random.key(0)
  sharding = None
  if jax.device_count() > 1:
    mesh = distributed.task_mesh()
    sharding = distributed.task_sharding(mesh)
    state, rng = distributed.replicate((state, rng), mesh)
  chunk = jax.jit(train.make_train_chunk(
      train.create_train_step(config, problem, tx), problem.tasks,
      meta_batch_size=meta_batch_size, steps_per_call=steps_per_call,
      batch_sharding=sharding), donate_argnums=0)
  state, metrics, _ = jax.block_until_ready(chunk(state, rng))  # Compile.
  start = time.perf_counter()
  for _ in range(calls):
    # Waiting on each call: queuing many sharded CPU calls can time out in
    # an all-reduce rendezvous.
    state, metrics, _ = jax.block_until_ready(chunk(state, rng))
  seconds = time.perf_counter() - start
  return {'devices': jax.device_count(), 'platform': jax.devices()[0].platform,
          'meta_batch_size': meta_batch_size,
          'meta_steps_per_s': calls * steps_per_call / seconds,
          'final_query_loss_after': float(metrics.compute()['query_loss_after'])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--devices', default='1,2,4')
  parser.add_argument('--meta_batch_size', type=int, default=24)
  parser.add_argument('--steps_per_call', type=int, default=50)
  parser.add_argument('--calls', type=int, default=10)
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(measure(args.meta_batch_size, args.steps_per_call,
                             args.calls)))
    return
  for n in [int(d) for d in args.devices.split(',')]:
    env = dict(os.environ)
    if n > 0:
      env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={n}'
      env['JAX_PLATFORMS'] = 'cpu'
    proc = subprocess.run(
        [sys.executable, __file__, '--worker',
         f'--meta_batch_size={args.meta_batch_size}',
         f'--steps_per_call={args.steps_per_call}', f'--calls={args.calls}'],
        env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
      sys.exit(f'{n} devices failed:\n{proc.stderr[-2000:]}')
    print(proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == '__main__':
  main()
