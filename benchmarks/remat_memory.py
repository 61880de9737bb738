"""Peak memory and time per meta-step of second-order MAML, with and without
rematerialized inner steps (``remat_inner_steps``).

  python benchmarks/remat_memory.py                       # sinusoid protocol
  python benchmarks/remat_memory.py --shots=200 --hidden=256,256

Memory is XLA's own account of the compiled meta-gradient step
(``jax.jit(f).lower(...).compile().memory_analysis()``): `temp` is the peak
scratch memory the step needs besides its arguments and outputs, the part
that grows with the inner steps when every step's activations are kept for
the backward pass. Time is the median wall time of a jitted meta-gradient
(value_and_grad of `maml_loss`, exact second order) over `--repeats` calls
after a warm-up; the ratio is remat / plain in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maml_plugin import core  # pylint: disable=g-import-not-at-top
from maml_plugin.models import MLP  # pylint: disable=g-import-not-at-top
from maml_plugin.tasks import SinusoidTasks  # pylint: disable=g-import-not-at-top


def meta_grad_fn(loss_fn, *, inner_lr, num_steps, remat):
  return jax.jit(jax.value_and_grad(
      lambda p, batch: core.maml_loss(loss_fn, p, batch, inner_lr=inner_lr,
                                      num_steps=num_steps, remat=remat)))


def measure(fn, params, batch, repeats):
  compiled = fn.lower(params, batch).compile()
  memory = compiled.memory_analysis()
  jax.block_until_ready(compiled(params, batch))  # Warm-up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, batch))
    times.append(time.perf_counter() - start)
  return memory.temp_size_in_bytes, float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', default='1,5,10,20')
  parser.add_argument('--hidden', default='40,40')
  parser.add_argument('--shots', type=int, default=10)
  parser.add_argument('--meta_batch_size', type=int, default=25)
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  hidden = tuple(int(h) for h in args.hidden.split(','))

  graphdef, params = nnx.split(MLP(1, hidden, 1, rngs=nnx.Rngs(0)),
                               nnx.Param)

  def loss_fn(p, batch):
    return jnp.mean((nnx.merge(graphdef, p)(batch['x']) - batch['y']) ** 2)

  batch = SinusoidTasks(num_support=args.shots, num_query=args.shots).sample(
      jax.random.key(0), args.meta_batch_size)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  print(f'# second-order MAML meta-gradient, MLP 1-{"-".join(map(str, hidden))}'
        f'-1 ({num_params} params), {args.meta_batch_size} tasks x '
        f'{args.shots} shots, float32, {jax.devices()[0].platform}, median '
        f'of {args.repeats}')
  print(f'{"inner steps":>11} {"temp MiB":>9} {"remat MiB":>9} '
        f'{"ms/step":>8} {"remat ms":>8} {"time x":>6}')
  for num_steps in (int(s) for s in args.steps.split(',')):
    plain = measure(meta_grad_fn(loss_fn, inner_lr=0.01, num_steps=num_steps,
                                 remat=False), params, batch, args.repeats)
    remat = measure(meta_grad_fn(loss_fn, inner_lr=0.01, num_steps=num_steps,
                                 remat=True), params, batch, args.repeats)
    print(f'{num_steps:>11} {plain[0] / 2**20:9.3f} {remat[0] / 2**20:9.3f} '
          f'{plain[1] * 1e3:8.2f} {remat[1] * 1e3:8.2f} '
          f'{remat[1] / plain[1]:6.2f}')


if __name__ == '__main__':
  main()
