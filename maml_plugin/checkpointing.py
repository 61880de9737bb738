"""Orbax checkpoints of the meta train state (atomic, keeps the latest N).

What a checkpoint holds: ``{'state': MetaTrainState, 'rng': key data}``:
params, optimizer state and step, and the base key the loop folds the step
into, so a resumed run draws the same tasks as an uninterrupted one.

Orbax writes each step to a temporary folder and renames it when complete, so
a kill during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint cannot be restored into the state this config builds."""


def create_manager(workdir: str, *, max_to_keep: int) -> ocp.CheckpointManager:
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True,
          enable_async_checkpointing=False))


def save(manager: ocp.CheckpointManager, state, rng: jax.Array) -> None:
  step = int(jax.device_get(state.step))
  item = {'state': state, 'rng': jax.random.key_data(rng)}
  manager.save(step, args=ocp.args.StandardSave(item), force=True)
  manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, state, rng: jax.Array):
  """Returns ``(state, rng)`` from the latest checkpoint, or the inputs.

  `state` and `rng` give the structure, shapes and dtypes expected; a
  checkpoint that does not match raises `CheckpointError` naming it.
  """
  step = manager.latest_step()
  if step is None:
    return state, rng
  target = {'state': state, 'rng': jax.random.key_data(rng)}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  path = os.path.join(str(manager.directory), str(step))
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # orbax raises many types; name the checkpoint.
    raise CheckpointError(
        f'checkpoint {path} cannot be restored into this config\'s state '
        f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})'
    ) from e
  return restored['state'], jax.random.wrap_key_data(restored['rng'])
