"""Cost of the registered train step over a hand-written one, parameter-only.

  python benchmarks/step_overhead.py [--rounds 15]
  PYTHONPATH=/path/to/other/checkout python benchmarks/step_overhead.py

Second-order MAML on the sinusoid MLP (1-40-40-1, 1 inner step, meta-batch
25, K = 10), 100 meta-steps fused per jitted call, meta-batches sampled
inside the call. Two steps, timed round robin in one process:

  hand        second-order MAML written by hand in plain JAX (jax.grad inner
              step, jax.vmap over tasks, Adam): uses nothing of the package,
              so it is the same baseline for every version of it.
  registered  maml_plugin.make_train_step('maml', ...) on a MetaTrainState.

Prints the median time per call of each and the median per-round ratio
registered / hand. Run it with PYTHONPATH pointing at two checkouts (before
and after a change) on the same machine to compare their ratios: only the
ratio is the claim, absolute times depend on the machine.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import maml_plugin
from maml_plugin.models import MLP
from maml_plugin.tasks import SinusoidTasks

STEPS_PER_CALL = 100
META_BATCH = 25


def build():
  tasks = SinusoidTasks(num_support=10, num_query=10)
  graphdef, params = nnx.split(MLP(1, (40, 40), 1, rngs=nnx.Rngs(0)),
                               nnx.Param)

  def loss_fn(p, batch):
    pred = nnx.merge(graphdef, p)(batch['x'])
    return jnp.mean(jnp.square(pred - batch['y']))

  tx = optax.adam(1e-3)

  def hand_meta_loss(p, batch):
    def per_task(task):
      g = jax.grad(loss_fn)(p, task['support'])
      adapted = jax.tree.map(lambda a, b: a - 0.01 * b, p, g)
      return loss_fn(adapted, task['query'])
    return jnp.mean(jax.vmap(per_task)(batch))

  def hand_chunk(carry, rng):
    def body(c, s):
      p, opt_state = c
      batch = tasks.train_batch(jax.random.fold_in(rng, s), META_BATCH)
      grads = jax.grad(hand_meta_loss)(p, batch)
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), None
    return jax.lax.scan(body, carry, jnp.arange(STEPS_PER_CALL))[0]

  step = maml_plugin.make_train_step('maml', loss_fn=loss_fn, tx=tx,
                                     inner_lr=0.01)

  def registered_chunk(state, rng):
    def body(s, i):
      key = jax.random.fold_in(rng, i)
      batch = tasks.train_batch(key, META_BATCH)
      return step(s, batch, key)[0], None
    return jax.lax.scan(body, state, jnp.arange(STEPS_PER_CALL))[0]

  return {
      'hand': (jax.jit(hand_chunk), (params, tx.init(params))),
      'registered': (jax.jit(registered_chunk),
                     maml_plugin.MetaTrainState.create(params, tx)),
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rounds', type=int, default=15)
  args = parser.parse_args()
  runs = build()
  carries = {}
  for name, (fn, carry) in runs.items():  # Compile and warm up.
    carries[name] = jax.block_until_ready(fn(carry, jax.random.key(0)))
  times = {name: [] for name in runs}
  for r in range(args.rounds):
    for name, (fn, _) in runs.items():
      t0 = time.perf_counter()
      carries[name] = jax.block_until_ready(
          fn(carries[name], jax.random.key(r + 1)))
      times[name].append(time.perf_counter() - t0)
  ratios = [b / a for a, b in zip(times['hand'], times['registered'])]
  print(f'maml_plugin {maml_plugin.__file__}')
  for name, ts in times.items():
    print(f'{name:>11}: {statistics.median(ts) * 1e3:8.1f} ms per '
          f'{STEPS_PER_CALL} meta-steps (median of {len(ts)})')
  print(f'registered / hand: {statistics.median(ratios):.3f} '
        f'(median per-round ratio)')


if __name__ == '__main__':
  main()
