"""Orbax checkpoints of the meta train state (atomic, keeps the latest N).

What a checkpoint holds: ``{'state': MetaTrainState, 'rng': key data}``:
params, optimizer state and step, and the base key the loop folds the step
into, so a resumed run draws the same tasks as an uninterrupted one.

Any train state that is a pytree of arrays works the same, Flax's
``flax.training.train_state.TrainState`` included: its ``step`` starts as a
Python int (saved and restored as an int array), and its ``tx`` and
``apply_fn`` are static fields, taken from the state passed to
`restore_latest`::

  manager = create_manager(workdir, max_to_keep=3)
  state = TrainState.create(apply_fn=apply_fn, params=params, tx=tx)
  state, rng = restore_latest(manager, state, jax.random.key(0))
  ...
  save(manager, state, rng)

Orbax writes each step to a temporary folder and renames it when complete, so
a kill during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from maml_plugin import core

# Orbax writes a step into `<step>.orbax-checkpoint-tmp-<n>` and renames it.
_TMP_MARK = '.orbax-checkpoint-tmp'


class CheckpointError(RuntimeError):
  """A checkpoint cannot be restored into the state this config builds."""


def create_manager(workdir: str, *, max_to_keep: int) -> ocp.CheckpointManager:
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True,
          enable_async_checkpointing=False))


def _as_arrays(tree):
  """Python scalars (a Flax `TrainState`'s int step) as arrays: orbax and
  the restore target need a shape and a dtype for every leaf."""
  return jax.tree.map(
      lambda x: x if hasattr(x, 'shape') else jnp.asarray(x), tree)


def save(manager: ocp.CheckpointManager, state, rng: jax.Array) -> None:
  step = int(jax.device_get(state.step))
  item = _as_arrays({'state': state, 'rng': jax.random.key_data(rng)})
  manager.save(step, args=ocp.args.StandardSave(item), force=True)
  manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, state, rng: jax.Array):
  """Returns ``(state, rng)`` from the latest checkpoint, or the inputs.

  `state` and `rng` give the structure, shapes and dtypes expected; a
  checkpoint that does not match raises `CheckpointError` naming it.
  """
  directory = str(manager.directory)
  incomplete = sorted(n for n in os.listdir(directory) if _TMP_MARK in n)
  if incomplete:
    # A save that was killed before its rename; never the latest checkpoint.
    # Left in place: only the user deletes things in a workdir.
    logging.warning('Ignoring incomplete checkpoints (interrupted saves) in '
                    '%s: %s', directory, ', '.join(incomplete))
  step = manager.latest_step()
  if step is None:
    return state, rng
  target = _as_arrays({'state': state, 'rng': jax.random.key_data(rng)})
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  path = os.path.join(directory, str(step))
  _check_shapes(path, abstract)
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # orbax raises many types; name the checkpoint.
    detail = str(e).splitlines()[0][:160] if str(e) else ''
    raise CheckpointError(
        f'checkpoint {path} cannot be read (corrupt, truncated or written '
        f'by another version?): {type(e).__name__}: {detail}; nothing in '
        'the workdir was changed'
    ) from e
  return restored['state'], jax.random.wrap_key_data(restored['rng'])


def _leaf_name(path) -> str:
  return '.'.join(core.key_path_names(path))


def _check_shapes(path: str, abstract) -> None:
  """Names the first array whose stored shape differs from `abstract`'s."""
  try:
    # The item's handler reads the item's own metadata; a Checkpointer
    # would also look for checkpoint-level metadata in the item's folder,
    # which the manager writes one level up, and warn that it is missing.
    handler = ocp.StandardCheckpointHandler()
    try:
      metadata = handler.metadata(epath.Path(path) / 'default')
    finally:
      handler.close()
    metadata = getattr(metadata, 'item_metadata', metadata)
    stored = {getattr(m, 'name', None): tuple(m.shape)
              for m in jax.tree.leaves(metadata) if hasattr(m, 'shape')}
  except Exception:  # Unreadable metadata: the restore names the problem.
    return
  for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    name = _leaf_name(leaf_path)
    if name in stored and stored[name] != tuple(leaf.shape):
      raise CheckpointError(
          f'checkpoint {path} does not match this config\'s model: {name} '
          f'has shape {stored[name]} there, {tuple(leaf.shape)} here '
          '(another hidden_sizes or task?); use another --workdir')
