"""Why 10 inner steps diverge: the curvature of the learned initialization.

  python -m maml_plugin.main --config=configs/maml_sine.py:paper \\
      --workdir=/tmp/paper --config.max_checkpoints_to_keep=10
  python benchmarks/sine_curvature.py --workdir=/tmp/paper --config_arg=paper

For every checkpoint in WORKDIR and every held-out task (the run's 600), the
top eigenvalue λ of the Hessian of the task's support loss at the learned
initialization (power iteration on Hessian-vector products, float64), and
the query MSE after 10 inner steps in float32 and in float64 from the same
parameters. Gradient descent at rate α is stable on a quadratic only where
α·λ < 2. Prints, per checkpoint, the median and 90th percentile of α·λ, the
tasks above 2, and the tasks whose 10-step MSE is non-finite in either
precision (with their amplitude and α·λ).
"""

import argparse
import os
import sys

import jax

jax.config.update('jax_enable_x64', True)

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import maml_sine  # pylint: disable=g-import-not-at-top
from maml_plugin import checkpointing  # pylint: disable=g-import-not-at-top
from maml_plugin import train  # pylint: disable=g-import-not-at-top

import hessian  # pylint: disable=g-import-not-at-top

POWER_ITERATIONS = 40


def _cast(tree, dtype):
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


def top_eigenvalue(loss_fn, params, support):
  """Largest-magnitude Hessian eigenvalue of `loss_fn` at `params`."""
  return hessian.top_eigenvalue(loss_fn, params, support, POWER_ITERATIONS)


def per_task(loss_fn, inner_lr, steps, params, task):
  """(λ at the initialization, query MSE after `steps` SGD steps)."""
  lam = top_eigenvalue(loss_fn, params, task['support'])
  p = params
  for _ in range(steps):
    g = jax.grad(loss_fn)(p, task['support'])
    p = jax.tree.map(lambda a, b: a - inner_lr * b, p, g)
  return lam, loss_fn(p, task['query'])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--config_arg', default=None)
  parser.add_argument('--steps', type=int, default=10)
  args = parser.parse_args()
  config = maml_sine.get_config(args.config_arg)
  problem = train.create_problem(config)
  tx = train.create_optimizer(config)
  state = train.create_train_state(
      problem, train.create_algorithm(config, problem, tx), tx)
  tasks = problem.tasks.held_out(seed=config.eval_seed,
                                 num_tasks=config.num_eval_tasks,
                                 num_query=config.eval_num_query)
  tasks = {'support': tasks['support'], 'query': tasks['query'],
           'amplitude': tasks['amplitude']}
  alpha = config.inner_lr
  run = jax.jit(jax.vmap(
      lambda p, t: per_task(problem.loss_fn, alpha, args.steps, p, t),
      in_axes=(None, 0)))
  manager = checkpointing.create_manager(args.workdir, max_to_keep=1000)
  target = {'state': state,
            'rng': jax.random.key_data(jax.random.key(0))}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  print(f'alpha={alpha}; {config.num_eval_tasks} held-out tasks; '
        f'{args.steps}-step query MSE')
  for step in sorted(manager.all_steps()):
    params = manager.restore(
        step, args=ocp.args.StandardRestore(abstract))['state'].params
    if isinstance(params, dict) and 'model' in params:  # Learned rates.
      params = params['model']
    params32 = _cast(params, jnp.float32)
    lam, _ = run(_cast(params32, jnp.float64), _cast(tasks, jnp.float64))
    _, mse32 = run(params32, _cast(tasks, jnp.float32))
    _, mse64 = run(_cast(params32, jnp.float64), _cast(tasks, jnp.float64))
    ratio = alpha * np.asarray(lam)
    mse32, mse64 = np.asarray(mse32), np.asarray(mse64)
    bad = ~np.isfinite(mse32) | ~np.isfinite(mse64)
    print(f'meta-step {step:>6}: alpha*lambda median {np.median(ratio):.2f}, '
          f'p90 {np.percentile(ratio, 90):.2f}, max {ratio.max():.2f}; '
          f'{int((ratio > 2).sum())} tasks above 2; non-finite after '
          f'{args.steps} steps: float32 {np.flatnonzero(~np.isfinite(mse32)).tolist()}, '
          f'float64 {np.flatnonzero(~np.isfinite(mse64)).tolist()}')
    for i in np.flatnonzero(bad):
      print(f'    task {i}: amplitude {float(tasks["amplitude"][i]):.2f}, '
            f'alpha*lambda {ratio[i]:.2f}')
  manager.close()


if __name__ == '__main__':
  main()
