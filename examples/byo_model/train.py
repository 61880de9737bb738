r"""Meta-train YOUR OWN Flax NNX model with maml_plugin: 5-way 1-shot Omniglot.

A plain training loop, written as a user of the package would write it: the
network (`model.py`) knows nothing about MAML; `maml_plugin.NNXModel` splits
it into parameters and state (batch-norm running averages), a registered
train step meta-trains it, `FewShotEvaluator` measures it on 600 held-out
tasks, and `update_module` writes the result back into the network.

  MAML_PLUGIN_DATA_DIR=/path/holding/omniglot \
    python examples/byo_model/train.py --num_steps 1000 --output byo.json

The evaluation runs twice, once with batch norm from each batch's own
statistics (the transductive setting of the MAML reference code) and once
from the running averages the train steps stored.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import maml_plugin
from maml_plugin.evaluation import FewShotEvaluator
from maml_plugin.evaluation import summarize
from maml_plugin.tasks import omniglot
from maml_plugin.tasks.episodic import EpisodicTasks

from model import OmniglotCNN  # model.py beside this script

BN_MODES = {'batch_stats': True, 'running_averages': False}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--num_steps', type=int, default=1000, help='meta-steps')
  p.add_argument('--meta_batch_size', type=int, default=32, help='tasks/step')
  p.add_argument('--task_batch_size', type=int, default=1,
                 help='tasks vmapped at a time (1: fastest convs on CPU)')
  p.add_argument('--outer_lr', type=float, default=1e-3)
  p.add_argument('--inner_lr', type=float, default=0.4)
  p.add_argument('--num_inner_steps', type=int, default=1)
  p.add_argument('--ways', type=int, default=5)
  p.add_argument('--shots', type=int, default=1)
  p.add_argument('--train_query', type=int, default=1,
                 help='query images per class in training tasks')
  p.add_argument('--channels', type=int, default=32,
                 help='conv width (32 trains in minutes on a 2-core CPU)')
  p.add_argument('--dropout', type=float, default=0.1)
  p.add_argument('--eval_tasks', type=int, default=600)
  p.add_argument('--eval_query', type=int, default=15)
  p.add_argument('--eval_steps', type=int, default=3,
                 help='evaluate after 0..eval_steps inner steps')
  p.add_argument('--eval_task_batch_size', type=int, default=1,
                 help='held-out tasks vmapped at a time (1: fastest on CPU)')
  p.add_argument('--log_every', type=int, default=100)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--data_dir', default=None,
                 help='folder holding omniglot/ (default $MAML_PLUGIN_DATA_DIR)')
  p.add_argument('--output', default=None, help='write the results as JSON')
  args = p.parse_args(argv)
  if args.num_steps < 1:
    p.error(f'--num_steps={args.num_steps}: must be >= 1')
  return args


# The user's losses: functions of a merged module and a batch.
def cross_entropy(net, batch):
  logits = net(batch['x'])
  return optax.softmax_cross_entropy_with_integer_labels(
      logits, batch['y']).mean()


def accuracy(net, batch):
  return jnp.mean(jnp.argmax(net(batch['x']), -1) == batch['y'])


def format_table(summaries: dict, num_tasks: int) -> str:
  steps = sorted(next(iter(summaries.values())))
  head = ['batch norm from'] + [
      'before adapting' if k == 0 else f'after {k} step{"s" * (k > 1)}'
      for k in steps]
  rows = [[mode] + [f'{100 * s[k].mean:.1f} ± {100 * s[k].ci95:.1f}%'
                    for k in steps]
          for mode, s in summaries.items()]
  lines = [' | '.join(head), ' | '.join('---' for _ in head)]
  lines += [' | '.join(r) for r in rows]
  return (f'query accuracy, mean ± ci95 over {num_tasks} tasks\n' +
          '\n'.join(f'| {l} |' for l in lines))


def main(argv=None):
  """Trains, evaluates, writes back; returns ``(results, net)``."""
  args = parse_args(argv)
  t_start = time.time()

  # --- Data: 5-way 1-shot tasks from the Vinyals splits. -------------------
  train_split = omniglot.load_split('vinyals_train', data_dir=args.data_dir)
  test_split = omniglot.load_split('vinyals_test', data_dir=args.data_dir)
  train_tasks = EpisodicTasks.from_arrays(
      train_split.images, train_split.labels, ways=args.ways,
      num_support=args.shots, num_query=args.train_query)
  test_tasks = EpisodicTasks.from_arrays(
      test_split.images, test_split.labels, ways=args.ways,
      num_support=args.shots, num_query=args.eval_query)
  held_out = test_tasks.held_out(seed=args.seed, num_tasks=args.eval_tasks,
                                 num_query=args.eval_query)

  # --- Your model, split once; your loss; a registered MAML step. ----------
  net = OmniglotCNN(ways=args.ways, channels=args.channels,
                    dropout_rate=args.dropout, rngs=nnx.Rngs(args.seed))
  model = maml_plugin.NNXModel(net)
  tx = optax.adam(args.outer_lr)
  alg = maml_plugin.make_algorithm(
      'maml', loss_fn=model.task_loss(cross_entropy), tx=tx,
      inner_lr=args.inner_lr, num_inner_steps=args.num_inner_steps,
      task_batch_size=args.task_batch_size,
      metric_fn=model.task_loss(accuracy))
  state = maml_plugin.MetaTrainState.create(
      alg.init_params(model.params), tx, model_state=model.model_state)
  initial_state = jax.tree.map(np.asarray, model.model_state)

  @jax.jit
  def train_step(state, key):
    batch = train_tasks.train_batch(jax.random.fold_in(key, 0),
                                    args.meta_batch_size)
    return alg.train_step(state, batch, jax.random.fold_in(key, 1))

  # --- Meta-training. ------------------------------------------------------
  rng = jax.random.key(args.seed)
  t_train = time.time()
  window, window_steps = None, 0
  for step in range(1, args.num_steps + 1):
    state, metrics = train_step(state, jax.random.fold_in(rng, step))
    if step == 1:  # The first step compiles; time the others.
      jax.block_until_ready(state)
      compile_s = time.time() - t_train
      t_steady = t_window = time.time()
    window = metrics if window is None else window.merge(metrics)
    window_steps += 1
    if step % args.log_every == 0 or step == args.num_steps:
      m = {k: float(v) for k, v in window.compute().items()}
      timed = window_steps - (1 if step <= args.log_every else 0)
      rate = (time.time() - t_window) / max(timed, 1)
      print(f'step {step:5d}  query acc {m["query_accuracy_before"]:.3f} -> '
            f'{m["query_accuracy_after"]:.3f}  loss '
            f'{m["query_loss_before"]:.3f} -> {m["query_loss_after"]:.3f}  '
            f'{rate:.3f} s/step', flush=True)
      window, window_steps, t_window = None, 0, time.time()
  jax.block_until_ready(state)
  train_s = time.time() - t_train
  steady_steps = args.num_steps - 1
  step_s = ((time.time() - t_steady) / steady_steps if steady_steps
            else float('nan'))

  # --- Evaluation: 600 held-out tasks, both batch-norm modes. --------------
  t_eval = time.time()
  summaries, curves = {}, {}
  for mode, batch_stats in BN_MODES.items():
    evaluator = FewShotEvaluator(
        model.eval_loss(cross_entropy, batch_stats=batch_stats), held_out,
        num_inner_steps=args.eval_steps, metric='accuracy',
        metric_fn=model.eval_loss(accuracy, batch_stats=batch_stats),
        inner_loop_for=alg.eval_inner_loop,
        task_batch_size=args.eval_task_batch_size)
    curves[mode] = evaluator(state.params, state.model_state)
    summaries[mode] = summarize(curves[mode])
  eval_s = time.time() - t_eval
  print(format_table(summaries, args.eval_tasks))

  # --- Back into the module: the trained net is an ordinary NNX module. ----
  model.update_module(state.params, state.model_state)
  net.eval()  # Dropout off, batch norm from the running averages.
  x = held_out['query']['x'][0]
  reference = model.merge(state.params, state.model_state,
                          deterministic=True, use_running_average=True)(x)
  round_trip = float(jnp.max(jnp.abs(net(x) - reference)))
  net.train()
  moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
           for a, b in zip(jax.tree.leaves(nnx.state(net, nnx.BatchStat)),
                           jax.tree.leaves(initial_state))]
  print(f'written back: module logits match the trained state to '
        f'{round_trip:.1e}; batch-norm running averages moved by up to '
        f'{max(moved):.3f} from their initial values')

  results = {
      'config': vars(args),
      'algorithm': 'maml',
      'devices': [str(d) for d in jax.devices()],
      'eval': {mode: {str(k): {'mean': v.mean, 'ci95': v.ci95,
                               'median': v.median, 'nonfinite': v.nonfinite}
                      for k, v in s.items()}
               for mode, s in summaries.items()},
      'train_final': {k: float(v) for k, v in metrics.compute().items()},
      'timing_s': {'total': time.time() - t_start, 'train': train_s,
                   'first_step_with_compile': compile_s,
                   'step': step_s, 'eval': eval_s},
      'round_trip_max_abs_diff': round_trip,
      'running_average_max_change': max(moved),
      'table': format_table(summaries, args.eval_tasks),
  }
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(results, f, indent=2)
  return results, net


if __name__ == '__main__':
  main()
