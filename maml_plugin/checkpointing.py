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
a kill during a save leaves the previous checkpoint intact. Each complete
checkpoint also gets ``sha256.json``, the digest of every file in it, so a
changed byte (bit rot, a partial copy) is found before it is trained on.
`restore_latest` takes the newest checkpoint that reads and verifies, naming
each newer one that does not; nothing is deleted. A save that fails on the
disk (full, read-only) raises `CheckpointWriteError` naming the path, after
removing its own temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from maml_plugin import core
from maml_plugin import workdir as workdir_lib

# Orbax writes a step into `<step>.orbax-checkpoint-tmp-<n>` and renames it.
_TMP_MARK = '.orbax-checkpoint-tmp'
CHECKSUMS = 'sha256.json'
# An unreadable checkpoint, set aside by a training run so that the step can
# be saved again: `<step>.unreadable-<time>`.
UNREADABLE_MARK = '.unreadable'
# A checkpoint after the step a run rolled back to (`set_aside_after`).
ROLLED_BACK_MARK = '.rolled-back'


class CheckpointError(RuntimeError):
  """A checkpoint cannot be restored into the state this config builds."""


class CheckpointWriteError(CheckpointError):
  """A checkpoint could not be written (disk full, read-only, ...)."""


def _files(path: str) -> list[str]:
  out = []
  for root, _, names in os.walk(path):
    out += [os.path.relpath(os.path.join(root, n), path) for n in names
            if n != CHECKSUMS]
  return sorted(out)


def _digest(file: str) -> str:
  h = hashlib.sha256()
  with open(file, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def write_checksums(path: str) -> None:
  """``path/sha256.json``: the sha256 of every file of the checkpoint."""
  digests = {name: _digest(os.path.join(path, name)) for name in _files(path)}
  workdir_lib.write_text(os.path.join(path, CHECKSUMS),
                         json.dumps(digests, indent=1, sort_keys=True) + '\n')


def verify_checksums(path: str) -> bool:
  """Raises `CheckpointError` naming the first file of the checkpoint at
  `path` that is missing or differs from its digest. False when the
  checkpoint has no digests (written before they existed, or the run
  stopped between its rename and its digests): nothing to verify."""
  try:
    digests = workdir_lib.read_json(os.path.join(path, CHECKSUMS))
  except workdir_lib.WorkdirError as e:
    raise CheckpointError(str(e)) from None
  if digests is None:
    return False
  for name, want in sorted(digests.items()):
    file = os.path.join(path, name)
    if not os.path.isfile(file):
      raise CheckpointError(f'{file} is missing')
    if _digest(file) != want:
      raise CheckpointError(f'{file} differs from its sha256 in {CHECKSUMS} '
                            '(bit rot, or a partial copy)')
  return True


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
  """Saves `state` and `rng` as step ``state.step``, with its digests.

  Raises `CheckpointWriteError` (one line naming the path) when the disk
  refuses; the save's temporary folder is removed, the complete checkpoints
  are untouched.
  """
  step = int(jax.device_get(state.step))
  directory = str(manager.directory)
  path = os.path.join(directory, str(step))
  item = _as_arrays({'state': state, 'rng': jax.random.key_data(rng)})
  renamed = False
  try:
    manager.save(step, args=ocp.args.StandardSave(item), force=True)
    manager.wait_until_finished()
    renamed = True
    if jax.process_index() == 0:
      write_checksums(path)
  except Exception as e:  # orbax wraps the OSError in its own types.
    if not (isinstance(e, workdir_lib.WorkdirError)
            or workdir_lib.is_io_error(e)):
      raise
    _remove_temporary(directory, step)
    if renamed and jax.process_index() == 0:
      # This save's own checkpoint, in place but without its digests (the
      # disk filled while writing them): not a complete checkpoint.
      shutil.rmtree(path, ignore_errors=True)
    kept = [s for s in manager.all_steps() if s != step] if os.path.isdir(
        directory) else []
    message = (workdir_lib.describe_os_error(e, path)
               if workdir_lib.is_io_error(e) else str(e))
    raise CheckpointWriteError(
        f'{message}; the complete checkpoints '
        f'({", ".join(map(str, sorted(kept))) or "none"}) are intact'
    ) from None


def _remove_temporary(directory: str, step: int, *, settle_s: float = 0.2,
                      max_rounds: int = 10) -> None:
  """Removes the temporary folders of a failed save of `step` (its own).

  When one write fails, orbax gives up while tensorstore's threads may
  still be writing the others, and can recreate the folder after it was
  removed (seen on a loaded machine): removed again until a listing
  `settle_s` later finds none, at most `max_rounds` times.
  """
  for _ in range(max_rounds):
    try:
      names = [n for n in os.listdir(directory)
               if n.startswith(f'{step}{_TMP_MARK}')]
    except OSError:
      return
    if not names:
      return
    for name in names:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    time.sleep(settle_s)


def restore_latest(manager: ocp.CheckpointManager, state, rng: jax.Array,
                   *, set_aside_unreadable: bool = False):
  """Returns ``(state, rng)`` from the newest readable checkpoint, or the
  inputs when there is none.

  `state` and `rng` give the structure, shapes and dtypes expected; a
  checkpoint whose shapes differ raises `CheckpointError` naming it (a
  config change, not damage). A checkpoint that cannot be read or fails its
  digests is named in the log and the next older one is tried; none
  readable raises `CheckpointError` naming the newest. Nothing is deleted;
  with `set_aside_unreadable` (a training run, which will save those steps
  again) each unreadable checkpoint is renamed ``<step>.unreadable-<time>``.
  """
  directory = str(manager.directory)
  incomplete = sorted(n for n in os.listdir(directory) if _TMP_MARK in n)
  if incomplete:
    # A save that was killed before its rename; never the latest checkpoint.
    # Left in place: only the user deletes things in a workdir.
    logging.warning('Ignoring incomplete checkpoints (interrupted saves) in '
                    '%s: %s', directory, ', '.join(incomplete))
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return state, rng
  return _restore_newest(manager, steps, state, rng,
                         set_aside_unreadable=set_aside_unreadable)


def restore_at_or_before(manager: ocp.CheckpointManager, step: int, state,
                         rng: jax.Array, *, set_aside_unreadable: bool = False):
  """`restore_latest` among the checkpoints of steps <= `step` (a rollback
  to before a blow-up): ``(state, rng)``, or None when there is no such
  checkpoint. One that does not read is named and the next older one is
  tried, as there; none readable raises `CheckpointError`."""
  steps = sorted((s for s in manager.all_steps() if s <= step), reverse=True)
  if not steps:
    return None
  return _restore_newest(manager, steps, state, rng,
                         set_aside_unreadable=set_aside_unreadable)


def set_aside_after(manager: ocp.CheckpointManager, step: int) -> list[int]:
  """Renames the checkpoints of steps after `step` to
  ``<step>.rolled-back-<time>`` (kept, never deleted), so that neither a
  resume nor the rolled-back run's own saves meet them; returns their
  steps."""
  later = sorted(s for s in manager.all_steps() if s > step)
  if later:
    _set_aside([os.path.join(str(manager.directory), str(s)) for s in later],
               mark=ROLLED_BACK_MARK, why='rolled back past it')
    manager.reload()
  return later


def _restore_newest(manager, steps: list[int], state, rng, *,
                    set_aside_unreadable: bool):
  """The first of `steps` (newest first) that reads; see `restore_latest`."""
  directory = str(manager.directory)
  target = _as_arrays({'state': state, 'rng': jax.random.key_data(rng)})
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  unreadable = []
  for step in steps:
    path = os.path.join(directory, str(step))
    _check_shapes(path, abstract)
    try:
      verified = verify_checksums(path)
      restored = manager.restore(step,
                                 args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types; name the checkpoint.
      detail = ' '.join(str(e).split())[:200]
      reason = (detail if isinstance(e, CheckpointError)
                else f'{type(e).__name__}: {detail}')
      logging.warning('Checkpoint %s cannot be read (%s); trying the one '
                      'before it.', path, reason)
      unreadable.append((path, reason))
      continue
    if not verified:
      logging.warning('Checkpoint %s has no %s (written before digests, or '
                      'stopped before them): restored unverified.', path,
                      CHECKSUMS)
    if unreadable:
      names = ', '.join(p for p, _ in unreadable)
      logging.warning('Resuming from %s, the newest checkpoint that reads; '
                      'not used: %s (kept).', path, names)
      if set_aside_unreadable:
        _set_aside([p for p, _ in unreadable])
        manager.reload()
    return restored['state'], jax.random.wrap_key_data(restored['rng'])
  path, reason = unreadable[0]
  raise CheckpointError(
      f'checkpoint {path} cannot be read (corrupt, truncated or written '
      f'by another version?): {reason}; no older checkpoint reads either '
      f'({len(unreadable)} tried); nothing in the workdir was changed')


def _set_aside(paths: list[str], *, mark: str = UNREADABLE_MARK,
               why: str = 'unreadable') -> None:
  stamp = time.strftime('%Y%m%d-%H%M%S')
  for path in paths:
    aside = f'{path}{mark}-{stamp}'
    try:
      os.rename(path, aside)
    except OSError as e:
      raise CheckpointWriteError(workdir_lib.describe_os_error(e, aside)) from e
    logging.warning('Moved the checkpoint %s (%s) to %s (kept for '
                    'inspection; the run will save that step again).', path,
                    why, aside)


def _leaf_name(path) -> str:
  return '.'.join(core.key_path_names(path))


def _check_shapes(path: str, abstract) -> None:
  """Names the first array of `abstract` the checkpoint lacks or stores
  with another shape (a config change, not damage: no older checkpoint of
  the run would read either)."""
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
    if stored and name not in stored:
      raise CheckpointError(
          f'checkpoint {path} does not match this config\'s train state: '
          f'it holds no {name} (another train_step, or a version of '
          'maml_plugin with another state layout?); use another --workdir')
    if name in stored and stored[name] != tuple(leaf.shape):
      raise CheckpointError(
          f'checkpoint {path} does not match this config\'s model: {name} '
          f'has shape {stored[name]} there, {tuple(leaf.shape)} here '
          '(another hidden_sizes or task?); use another --workdir')
