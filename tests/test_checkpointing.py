"""Checkpoint digests, the fallback to an older checkpoint, failed saves.

Tiny states (three floats), no training: each test takes about a second.
"""

import errno
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maml_plugin import checkpointing
from maml_plugin import algorithms


def _state(step: int, value: float):
  return algorithms.MetaTrainState.create(
      {'w': jnp.full(3, value)}, optax.sgd(0.1)).replace(
          step=jnp.int32(step))


def _saved(workdir: str, steps=(1, 2)):
  """A manager holding one checkpoint per step, params all equal to it."""
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  for step in steps:
    checkpointing.save(manager, _state(step, float(step)), jax.random.key(step))
  return manager


def _change_a_byte_orbax_does_not_check(workdir: str, step: int) -> None:
  """A checkpoint orbax still reads, but whose digests no longer match:
  only `verify_checksums` can tell."""
  with open(os.path.join(workdir, 'checkpoints', str(step),
                         'commit_success.txt'), 'a') as f:
    f.write(' ')


def test_save_writes_the_digest_of_every_file_into_the_checkpoint(tmp_path):
  """Pins: digests written only by process 1 (none on one machine), into
  the checkpoints folder instead of the step's (the arguments of the path
  join swapped), or `verify_checksums` reporting "no digests" when it has
  them (``is None`` -> ``is not None``)."""
  manager = _saved(str(tmp_path), steps=(3,))
  manager.close()
  path = str(tmp_path / 'checkpoints' / '3')
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3']
  assert checkpointing.CHECKSUMS in os.listdir(path)
  assert checkpointing.verify_checksums(path) is True
  _change_a_byte_orbax_does_not_check(str(tmp_path), 3)
  with pytest.raises(checkpointing.CheckpointError, match='commit_success'):
    checkpointing.verify_checksums(path)


def test_a_changed_byte_falls_back_to_the_older_checkpoint_set_aside(
    tmp_path):
  """Pins: a checkpoint whose digests fail is not restored (the older one
  is, with its own key), and with ``set_aside_unreadable`` it is renamed
  ``<step>.unreadable-<time>`` (the arguments of the rename swapped fail)."""
  workdir = str(tmp_path)
  manager = _saved(workdir)
  _change_a_byte_orbax_does_not_check(workdir, 2)
  state, rng = checkpointing.restore_latest(manager, _state(0, 0.0),
                                            jax.random.key(9),
                                            set_aside_unreadable=True)
  manager.close()
  assert int(state.step) == 1
  np.testing.assert_array_equal(state.params['w'], [1.0, 1.0, 1.0])
  np.testing.assert_array_equal(jax.random.key_data(rng),
                                jax.random.key_data(jax.random.key(1)))
  names = sorted(os.listdir(tmp_path / 'checkpoints'))
  assert names[0] == '1' and len(names) == 2, names
  assert names[1].startswith('2' + checkpointing.UNREADABLE_MARK + '-'), names


def test_no_checkpoint_reads_names_the_newest_and_changes_nothing(tmp_path):
  """Pins: the error naming an older unreadable checkpoint than the newest
  (``unreadable[0]`` -> ``[1]``), or moving files without being asked."""
  workdir = str(tmp_path)
  manager = _saved(workdir)
  for step in (1, 2):
    _change_a_byte_orbax_does_not_check(workdir, step)
  with pytest.raises(checkpointing.CheckpointError) as err:
    checkpointing.restore_latest(manager, _state(0, 0.0), jax.random.key(9))
  manager.close()
  newest = os.path.join(workdir, 'checkpoints', '2')
  assert str(err.value).startswith(f'checkpoint {newest} cannot be read'), (
      str(err.value))
  assert '(2 tried)' in str(err.value)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']


def test_a_full_disk_names_the_path_removes_the_temporary_folder(
    tmp_path, monkeypatch):
  """Pins the failed save: the disk's error as one line naming the step's
  path and the intact checkpoints, the save's temporary folder removed;
  an error that is not the disk's (a bug) passes through unchanged (the
  test of which errors are the disk's negated or its ``or`` made ``and``)."""
  workdir = str(tmp_path)
  manager = _saved(workdir, steps=(1,))
  directory = str(manager.directory)

  def full_disk(step, **kwargs):
    del kwargs
    os.makedirs(os.path.join(directory, f'{step}.orbax-checkpoint-tmp-7'))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(manager, 'save', full_disk)
  with pytest.raises(checkpointing.CheckpointWriteError) as err:
    checkpointing.save(manager, _state(2, 2.0), jax.random.key(2))
  path = os.path.join(directory, '2')
  assert str(err.value) == (f'cannot write {path}: No space left on device; '
                            'the complete checkpoints (1) are intact')
  assert sorted(os.listdir(directory)) == ['1']

  def bug(step, **kwargs):
    raise ValueError(f'not a disk error at step {step}')

  monkeypatch.setattr(manager, 'save', bug)
  with pytest.raises(ValueError, match='not a disk error at step 2'):
    checkpointing.save(manager, _state(2, 2.0), jax.random.key(2))
  manager.close()


def test_restore_gives_back_adams_moments_and_count_not_fresh_ones(tmp_path):
  """Pins: a restore that returns the optimizer state it was given (a
  fresh Adam: zero moments, count 0) instead of the saved one. A resumed
  run would then take Adam's first, bias-corrected steps again, and the
  end-to-end comparison of a resumed run with an uninterrupted one is the
  only other test that would notice. The moments are computed here by
  hand (optax's Adam: mu = (1 - b1) sum b1^k g, nu likewise with g^2)."""
  tx = optax.adam(0.1)
  params = {'w': jnp.zeros(3)}
  state = algorithms.MetaTrainState.create(params, tx)
  grads = [jnp.array([1.0, -2.0, 0.5]), jnp.array([3.0, 1.0, -1.0])]
  for g in grads:
    updates, opt_state = tx.update({'w': g}, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, opt_state=opt_state,
                          params=optax.apply_updates(state.params, updates))
  manager = checkpointing.create_manager(str(tmp_path), max_to_keep=2)
  checkpointing.save(manager, state, jax.random.key(0))
  fresh = algorithms.MetaTrainState.create(params, tx)
  restored, _ = checkpointing.restore_latest(manager, fresh,
                                             jax.random.key(1))
  manager.close()
  adam, _ = restored.opt_state
  mu = 0.1 * (0.9 * grads[0] + grads[1])
  nu = 0.001 * (0.999 * grads[0] ** 2 + grads[1] ** 2)
  np.testing.assert_allclose(adam.mu['w'], mu, rtol=1e-6)
  np.testing.assert_allclose(adam.nu['w'], nu, rtol=1e-6)
  assert int(adam.count) == 2 and int(restored.step) == 2
  np.testing.assert_array_equal(restored.params['w'], state.params['w'])
  for a, b in zip(jax.tree.leaves(restored.opt_state),
                  jax.tree.leaves(state.opt_state)):
    np.testing.assert_array_equal(a, b)
