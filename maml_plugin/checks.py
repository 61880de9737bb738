"""Checks of a meta-batch's shapes, made once when a train step is traced.

Usage::

  check_meta_batch(meta_batch)     # ValueError, one line, on a bad batch
  train_step = checked_train_step(train_step)   # checks every batch it gets

Shapes are static under `jax.jit`, so the check runs while the step is
traced and costs nothing per step; `algorithms.make_algorithm` applies it to
every registered train step. The contract it enforces (see DESIGN.md):

* the meta-batch is ``{'support': {...}, 'query': {...}}`` (other top-level
  entries, such as the sinusoid's ``'amplitude'``, are allowed);
* every leaf under support and query is ``[tasks, examples, ...]`` (rank at
  least 2) and ``x`` is ``[tasks, examples, features...]`` (rank at least 3);
  any other leaf has the task axis first;
* every leaf has the same number of tasks;
* within support, and within query, ``x`` and ``y`` have the same number of
  examples.

The most common mistake, one task without its task axis (support x
``[10, 1]``), is named as such, with the fix (``x[None]``). A batch of the
right form that the model or the loss cannot take (x with 2 features for a
model of 1) is named by `check_task_loss`, which the registered train steps
also run at trace time: the loss on one task, evaluated on shapes only.
"""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Mapping
from typing import Any, Callable

import flax
import jax
import numpy as np

PARTS = ('support', 'query')
_EXPECTED = "{'support': {'x': ..., 'y': ...}, 'query': {'x': ..., 'y': ...}}"


def _shape(leaf) -> tuple[int, ...]:
  shape = getattr(leaf, 'shape', None)
  return tuple(np.shape(leaf) if shape is None else shape)


def _name(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator='/')


def _fail(name: str, shape, expected: str, why: str):
  raise ValueError(f'meta-batch {name}: shape {tuple(shape)}, expected '
                   f'{expected}: {why}')


def _check_structure(meta_batch) -> None:
  if not isinstance(meta_batch, Mapping):
    raise ValueError(f'meta-batch: got a {type(meta_batch).__name__}, '
                     f'expected a dict {_EXPECTED} of [tasks, examples, ...] '
                     'arrays')
  for part in PARTS:
    if part not in meta_batch:
      raise ValueError(f'meta-batch: no {part!r} in its keys '
                       f'{sorted(map(str, meta_batch))}, expected {_EXPECTED}')
    if not isinstance(meta_batch[part], Mapping):
      raise ValueError(
          f'meta-batch {part}: got a {type(meta_batch[part]).__name__} of '
          f'shape {_shape(meta_batch[part])}, expected a dict such as '
          "{'x': [tasks, examples, features...], 'y': [tasks, examples, ...]}")
    if not jax.tree.leaves(meta_batch[part]):
      raise ValueError(f'meta-batch {part}: holds no arrays, expected '
                       "{'x': [tasks, examples, features...], "
                       "'y': [tasks, examples, ...]}")


def _check_rank(name: str, key: str, part: str | None, shape) -> None:
  if part is None:
    need, form = 1, '[tasks, ...]'
  elif key == 'x':
    need, form = 3, '[tasks, examples, features...]'
  else:
    need, form = 2, '[tasks, examples, ...]'
  if len(shape) >= need:
    return
  why = f'rank {len(shape)} < {need}, no task axis'
  if part is not None and len(shape) == need - 1:
    why = (f'it looks like one task without the task axis; add it with '
           f'{key}[None] (to every leaf of that task)')
    if key == 'x':
      why += ' or, if the first axis is the tasks, a feature axis: x[..., None]'
  _fail(name, shape, f'{form} (rank >= {need})', why)


def check_meta_batch(meta_batch: Any) -> None:
  """Raises ValueError (one line: the leaf, its shape, the expected shape)
  if `meta_batch` breaks the contract in the module docstring."""
  _check_structure(meta_batch)
  leaves = []  # (name, key, part, shape), support and query first.
  for part in (*PARTS, None):
    tree = (meta_batch[part] if part is not None else
            {k: v for k, v in meta_batch.items() if k not in PARTS})
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      name = _name(path) if part is None else f'{part}/{_name(path)}'
      key = _name(path[:1])
      leaves.append((name, key, part, _shape(leaf)))
  for name, key, part, shape in leaves:
    _check_rank(name, key, part, shape)

  shapes = {name: shape for name, _, _, shape in leaves}
  first = 'support/x' if 'support/x' in shapes else leaves[0][0]
  first_shape = shapes[first]
  for name, shape in shapes.items():
    if shape[0] != first_shape[0]:
      _fail(name, shape, f'({first_shape[0]}, ...)',
            f'{shape[0]} tasks where {first} has {first_shape[0]}; every '
            'leaf starts with the same task axis')

  for part in PARTS:
    x, y = shapes.get(f'{part}/x'), shapes.get(f'{part}/y')
    if x is not None and y is not None and x[1] != y[1]:
      _fail(f'{part}/y', y, f'({y[0]}, {x[1]}, ...)',
            f'{y[1]} examples where {part}/x has {x[1]}')


def _first_task(tree):
  return jax.tree.map(lambda leaf: leaf[0], tree)


_LIBRARIES = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                   for m in (jax, flax))


def _where(error: BaseException) -> str:
  """``file:line in function`` of the innermost frame of `error`'s
  traceback outside JAX and Flax: the line of the model or loss that
  failed."""
  where = 'in the loss'
  for frame, line in traceback.walk_tb(error.__traceback__):
    file = os.path.abspath(frame.f_code.co_filename)
    if not file.startswith(_LIBRARIES):
      where = f'at {file}:{line} in {frame.f_code.co_name}'
  return where


def check_task_loss(loss_fn: Callable, params: Any, meta_batch: Any) -> None:
  """Raises ValueError (one line: the part's leaves and their shapes, and
  the error) if ``loss_fn(params, task)`` fails on one task's support or
  query set of `meta_batch` (a meta-batch that passed `check_meta_batch`):
  support x with 2 features for a model of 1, say, which would otherwise
  fail deep inside the train step naming no leaf of the meta-batch.

  Evaluated abstractly (`jax.eval_shape`: shapes only, nothing computed).
  Only the errors JAX raises for shapes (TypeError, ValueError) are
  turned into this line, which ends with the file and line of the model
  or loss where it failed (the innermost frame outside JAX and Flax); any
  other error of a user's loss is raised as it is.
  """
  for part in PARTS:
    task = _first_task(meta_batch[part])
    try:
      jax.eval_shape(loss_fn, params, task)
    except (TypeError, ValueError) as e:
      leaves = ', '.join(
          f'{part}/{_name(path)} {_shape(leaf)}' for path, leaf in
          jax.tree_util.tree_flatten_with_path(meta_batch[part])[0])
      first = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise ValueError(
          f'meta-batch {leaves}: the loss fails on one task of these '
          f'shapes (the model, or the loss, expects others): '
          f'{type(e).__name__}: {first} ({_where(e)})') from None


def checked_train_step(train_step: Callable) -> Callable:
  """`train_step` that first checks its meta-batch (`check_meta_batch`).

  Under `jax.jit` the check runs once, at trace time.
  """
  @functools.wraps(train_step)
  def step(state, batch, rng):
    check_meta_batch(batch)
    return train_step(state, batch, rng)

  return step
