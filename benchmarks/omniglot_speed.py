"""Meta-steps/s of 5-way 1-shot second-order MAML on Omniglot-sized tasks.

  python benchmarks/omniglot_speed.py --steps=5 --num_query=1
  python benchmarks/omniglot_speed.py --steps=3 --num_query=15

Times one full meta-step (meta-batch 32, 1 inner step, exact second order,
Adam update) of the MAML Omniglot Conv-4 (stride-2, 64 filters, transductive
batch norm) in the same process, on the same inputs shape:

  * ours: `maml_plugin`'s registered `maml` step with `Conv4(conv_impl=
    'matmul')` (convolution as patches + matmul) and `task_batch_size=1`
    (the meta-gradient one task at a time, as configs/maml_omniglot.py);
  * ours_vmap: the same with all 32 tasks in one `jax.vmap` (every matmul
    a batched one);
  * jax_lax_conv: the same step with `Conv4(conv_impl='lax')` (the plain
    `jax.vmap` + `lax.conv` version: grouped convolutions under vmap);
  * torch_loop: the same algorithm in plain PyTorch (a Python loop over
    tasks, `autograd.grad(..., create_graph=True)` for the inner step);
  * learn2learn: `l2l.algorithms.MAML` (clone, adapt, query loss per task),
    if learn2learn imports. learn2learn 0.2.0's sdist ships C files that do
    not compile on Python 3.11; it builds after regenerating them with a
    current Cython (`python setup.py build_ext` in the unpacked sdist, then
    `pip install --no-deps --no-build-isolation .`, plus `pip install gym`).

Inputs are random images of the Omniglot shape (speed does not depend on the
pixels). Every implementation is compiled and warmed up first; then
`--steps` rounds each time one meta-step of every implementation in turn, so
that a busy moment of a shared machine slows all of them alike. Prints one
line per implementation: the median seconds per meta-step, meta-steps per
second, and the median over rounds of its time divided by ours.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
import optax
from flax import nnx

from maml_plugin import algorithms
from maml_plugin.models import Conv4


def jax_meta_step(conv_impl: str, args, task_batch_size=None):
  model = Conv4(args.ways, conv_impl=conv_impl, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)

  def loss_fn(p, batch):
    logits = nnx.merge(graphdef, p)(batch['x'])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['y']).mean()

  tx = optax.adam(1e-3)
  step = jax.jit(algorithms.make_train_step(
      'maml', loss_fn=loss_fn, tx=tx, inner_lr=0.4, num_inner_steps=1,
      task_batch_size=task_batch_size))
  state = algorithms.MetaTrainState.create(params, tx)
  return step, state


def make_batch(args, rng):
  t, n, k, q = args.meta_batch, args.ways, args.shots, args.num_query
  x = rng.random((t, n * (k + q), 28, 28, 1), np.float32)
  y = np.tile(np.repeat(np.arange(n), k + q), (t, 1)).astype(np.int32)
  s = n * k
  return {'support': {'x': x[:, :s], 'y': y[:, :s]},
          'query': {'x': x[:, s:], 'y': y[:, s:]}}


def jax_stepper(conv_impl, args, batch, task_batch_size=None):
  """A closure running one meta-step (and waiting for it), compiled."""
  step, state = jax_meta_step(conv_impl, args, task_batch_size)
  batch = jax.device_put(batch)
  rng = jax.random.key(0)
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], batch, rng)
    jax.block_until_ready((holder[0], metrics))

  run()  # compiles
  return run


def import_learn2learn():
  """learn2learn 0.2.0, with `torchvision` stubbed if it is missing.

  learn2learn imports torchvision (and gym) at the top level for its vision
  datasets; `l2l.algorithms.MAML` uses neither. This machine kind has no CPU
  build of torchvision, so a stand-in module lets the import through.
  """
  import importlib.abc  # pylint: disable=g-import-not-at-top
  import importlib.machinery  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top

  class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):

    def find_spec(self, name, path, target=None):
      del path, target
      if name.split('.')[0] == 'torchvision':
        return importlib.machinery.ModuleSpec(name, self, is_package=True)
      return None

    def create_module(self, spec):
      module = types.ModuleType(spec.name)
      module.__path__ = []
      module.__getattr__ = lambda attr: type(attr, (), {})
      return module

    def exec_module(self, module):
      pass

  if importlib.util.find_spec('torchvision') is None:
    sys.meta_path.insert(0, _Stub())
  import learn2learn as l2l  # pylint: disable=g-import-not-at-top
  return l2l


def torch_stepper(args, batch, use_learn2learn: bool):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)

  def block(cin):
    return [nn.Conv2d(cin, 64, 3, stride=2, padding=1),
            nn.BatchNorm2d(64, track_running_stats=False), nn.ReLU()]

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(*block(1), *block(64), *block(64),
                                    *block(64))
      self.head = nn.Linear(64, args.ways)

    def forward(self, x):
      return self.head(self.features(x).mean(dim=(2, 3)))

  net = Net()
  opt = torch.optim.Adam(net.parameters(), 1e-3)
  sx = torch.from_numpy(batch['support']['x']).permute(0, 1, 4, 2, 3)
  sy = torch.from_numpy(batch['support']['y']).long()
  qx = torch.from_numpy(batch['query']['x']).permute(0, 1, 4, 2, 3)
  qy = torch.from_numpy(batch['query']['y']).long()
  loss_fn = nn.CrossEntropyLoss()
  if use_learn2learn:
    l2l = import_learn2learn()
    maml = l2l.algorithms.MAML(net, lr=0.4, first_order=False)
    name = f'learn2learn {l2l.__version__}'
  else:
    maml, name = None, 'torch_loop (plain PyTorch)'
  names = [n for n, _ in net.named_parameters()]

  def meta_step():
    opt.zero_grad()
    for i in range(args.meta_batch):
      if maml is not None:
        learner = maml.clone()
        learner.adapt(loss_fn(learner(sx[i]), sy[i]))
        loss = loss_fn(learner(qx[i]), qy[i])
      else:
        params = dict(net.named_parameters())
        grads = torch.autograd.grad(
            loss_fn(torch.func.functional_call(net, params, (sx[i],)), sy[i]),
            [params[n] for n in names], create_graph=True)
        fast = {n: params[n] - 0.4 * g for n, g in zip(names, grads)}
        loss = loss_fn(torch.func.functional_call(net, fast, (qx[i],)), qy[i])
      (loss / args.meta_batch).backward()
    opt.step()

  meta_step()  # warm-up
  return name, meta_step


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--meta_batch', type=int, default=32)
  parser.add_argument('--ways', type=int, default=5)
  parser.add_argument('--shots', type=int, default=1)
  parser.add_argument('--num_query', type=int, default=1,
                      help='query images per class')
  parser.add_argument('--skip', default='',
                      help='comma list of: ours, ours_vmap, jax_lax_conv, '
                      'torch, learn2learn')
  args = parser.parse_args()
  skip = set(filter(None, args.skip.split(',')))
  batch = make_batch(args, np.random.default_rng(0))
  print(f'{args.ways}-way {args.shots}-shot, {args.num_query} query/class, '
        f'meta-batch {args.meta_batch}, 1 inner step, second order; '
        f'{jax.devices()[0].platform}, {os.cpu_count()} cpus')
  steppers = []  # (name, run one meta-step), each compiled / warmed up
  if 'ours' not in skip:
    # The shipped setting (configs/maml_omniglot.py: task_batch_size=1).
    steppers.append(('ours (1 task at a time)',
                     jax_stepper('matmul', args, batch, task_batch_size=1)))
  if 'ours_vmap' not in skip:
    steppers.append(('ours, all tasks in one vmap',
                     jax_stepper('matmul', args, batch)))
  if 'jax_lax_conv' not in skip:
    steppers.append(('jax_lax_conv (vmap+lax.conv)',
                     jax_stepper('lax', args, batch)))
  if 'torch' not in skip:
    try:
      steppers.append(torch_stepper(args, batch, use_learn2learn=False))
    except ImportError:
      print('torch is not installed: no PyTorch baseline')
  if 'learn2learn' not in skip:
    try:
      steppers.append(torch_stepper(args, batch, use_learn2learn=True))
    except ImportError as e:
      print(f'learn2learn does not import ({e}): no learn2learn baseline')
  # Round robin: every round times one meta-step of each implementation, so
  # a busy moment of a shared machine slows all of them alike; the ratio
  # to ours is the median of the per-round ratios.
  times = {name: [] for name, _ in steppers}
  for _ in range(args.steps):
    for name, run in steppers:
      t0 = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - t0)
  first = steppers[0][0] if steppers else None
  ours = times[first] if first and first.startswith('ours') else None
  for name, sec in times.items():
    ratio = ''
    if ours:
      ratio = '  {:6.2f}x ours'.format(statistics.median(
          t / o for t, o in zip(sec, ours)))
    med = statistics.median(sec)
    print(f'{name:32s} {med:8.3f} s/meta-step  {1 / med:7.2f} meta-steps/s'
          + ratio)

if __name__ == '__main__':
  main()
