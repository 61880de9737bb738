"""Every validated config field at its boundary, generated from the field table.

Cases come from the declarations themselves (`TrainerFields` and the
`fields.Fields` of every entry the package registers), read from what each
field says it allows: 'an int > 0' gives 0 (refused) and 1 (accepted),
'an int >= 2' gives 1 and 2, 'a finite number > 0' gives 0.0, NaN and Inf,
'one of ...' a near miss, and so on. A field whose wording no rule below
reads still gets a value of the wrong type. So a field added later, by the
package or by another algorithm, is covered without editing this file.

Also here: configs that select behaviour (each shipped config's outer
optimizer and its learning-rate schedule, against the papers' rules
written out by hand).
"""

import dataclasses
import importlib
import math
import re

import jax
import jax.numpy as jnp
import optax
import pytest

from configs import maml_image_folder
from configs import maml_omniglot
from configs import maml_sine
from configs import maml_tfds
from maml_plugin import checkpointing
from maml_plugin import config_validation
from maml_plugin import train
from maml_plugin import algorithms
from maml_plugin.config_validation import ConfigError
from maml_plugin.config_validation import REGISTRIES
from tests import config_variants
from tests.layout_checks import package_names
from maml_plugin.config_validation import TrainerFields


class _NotAValue:
  """The wrong type for any field. Its repr is stable across processes, so
  test ids are the same in every pytest-xdist worker."""

  def __repr__(self):
    return '<not a value>'


_NOT_A_VALUE = _NotAValue()


def _base_config(kind: str, entry: str):
  """A valid quick config that uses the registered `entry` of `kind`
  ('trainer' for the trainer's own fields)."""
  if kind in ('trainer', 'task', 'model') and entry in ('', 'sinusoid',
                                                         'mlp'):
    return maml_sine.get_config('quick')
  if kind in ('task', 'model') and entry in ('omniglot', 'conv4'):
    return maml_omniglot.get_config('quick')
  if kind == 'task' and entry == 'tfds_episodic':
    return maml_tfds.get_config('quick')
  if kind == 'task' and entry == 'image_folder':
    return maml_image_folder.get_config('quick')
  if kind == 'train_step':
    if entry in maml_sine.ALGORITHMS:
      return maml_sine.get_config(f'quick,{entry}')
    config = maml_sine.get_config('quick')
    config.train_step = entry
    return config
  raise AssertionError(f'no shipped config uses {kind}={entry!r}; add one '
                       'to _base_config')


def _declared():
  """``(kind, entry, Fields class)`` for the trainer and every entry the
  package registers."""
  out = [('trainer', '', TrainerFields)]
  for kind, registry in REGISTRIES.items():
    for entry in package_names(registry):
      out.append((kind, entry, registry.fields(entry)))
  return out


def _quoted(allowed):
  return re.findall(r"'([^']*)'", allowed)


def boundary_values(allowed: str, default=dataclasses.MISSING):
  """``(refused, accepted)`` values for a field that allows `allowed` (and
  its `default`, which it accepts: None where its wording says nothing of
  None, e.g. ``rate_meta_lr``)."""
  refused, accepted = [_NOT_A_VALUE], []
  m = re.match(r'an int (>|>=) (-?\d+)', allowed)
  if m:
    low = int(m[2]) + (m[1] == '>')
    refused += [low - 1, float(low)]
    accepted += [low, low + 1]
  elif allowed.startswith('a finite number > 0'):
    refused += [0.0, -1e-6, math.nan, math.inf, 0]
    accepted += [1e-300, 2]
  elif allowed == 'True or False':
    refused += [1, 0, 'True']
    accepted += [True, False]
  elif allowed.startswith('one of') or re.fullmatch(r"'[^']*'( or '[^']*')+",
                                                    allowed):
    choices = _quoted(allowed)
    if choices:
      refused += [choices[0].upper() + '_', choices[0] + ' ']
      accepted += choices
    else:  # Numbers: 'one of 1, 3'.
      numbers = [int(x) for x in re.findall(r'-?\d+', allowed)]
      refused += [max(numbers) + 1, str(numbers[0]), float(numbers[0])]
      accepted += numbers
  elif allowed == 'a non-empty tuple of ints > 0':
    refused += [(), (0,), (4, -1), (4.0,), 4]
    accepted += [(1,), (1, 2)]
  elif 'regular expression' in allowed:
    refused += ['', '(']
    accepted += ['x', '^a/(b|c)$']
  elif allowed.startswith('a folder path'):
    refused += [3]
    accepted += ['', '/tmp']
  elif allowed.startswith('a list of module names'):
    refused += [('',), (3,), 'maml_plugin']
    accepted += [(), ('maml_plugin.losses',)]
  if 'None' in allowed or default is None:
    accepted.append(None)
  else:
    refused.append(None)
  return refused, accepted


def _cases():
  out = []
  for kind, entry, declared in _declared():
    for f in dataclasses.fields(declared):
      if f.name in REGISTRIES or 'check' not in f.metadata:
        continue  # The registered names: tests/test_config.py.
      allowed = f.metadata['allowed']
      refused, accepted = boundary_values(allowed, f.default)
      for value in refused:
        out.append(pytest.param(kind, entry, f.name, allowed, value,
                                id=f'{kind}:{entry}:{f.name}={value!r}'))
  return out


@pytest.mark.parametrize('kind,entry,name,allowed,value', _cases())
def test_bad_value_at_the_boundary_is_one_line(kind, entry, name, allowed,
                                               value):
  """Pins: a field's check accepting the value just past its boundary
  (``v >= 0`` for ``v > 0``, a bool as an int, NaN as a number) or a
  field that is not checked at all; the message must name the field, the
  value and the rule."""
  config = _base_config(kind, entry)
  config_validation.validate(config)  # The base is valid.
  values = config.to_dict()
  values[name] = value
  with pytest.raises(ConfigError) as err:
    config_validation.validate(values)
  message = str(err.value)
  assert '\n' not in message
  assert message.startswith(f'config.{name}={value!r}: must be {allowed}'), (
      message)


@pytest.mark.parametrize('kind,entry,declared', [
    pytest.param(k, e, d, id=f'{k}:{e}') for k, e, d in _declared()])
def test_value_at_the_boundary_is_accepted(kind, entry, declared):
  """Pins: a boundary one too strict (``v > 1`` for 'an int > 0', a
  choice the field says it allows but refuses)."""
  del kind, entry
  for f in dataclasses.fields(declared):
    if 'check' not in f.metadata or f.name in REGISTRIES:
      continue
    _, accepted = boundary_values(f.metadata['allowed'], f.default)
    for value in accepted:
      assert f.metadata['check'](value), (f.name, value)


def test_orbax_keeps_no_checkpoint_at_zero_so_the_config_refuses_it(
    tmp_path):
  """Pins the boundary of ``max_checkpoints_to_keep``: at 0 orbax keeps no
  checkpoint at all (each save is deleted), so a run could never resume;
  the config must refuse 0 and accept 1."""
  assert TrainerFields.allowed('max_checkpoints_to_keep') == 'an int > 0'
  with pytest.raises(ConfigError, match='max_checkpoints_to_keep=0'):
    config_validation.validate(dict(maml_sine.get_config('quick').to_dict(),
                                    max_checkpoints_to_keep=0))
  tx = optax.sgd(0.1)
  state = algorithms.MetaTrainState.create({'w': jnp.zeros(2)}, tx)
  kept = {}
  for keep in (0, 1):
    manager = checkpointing.create_manager(str(tmp_path / str(keep)),
                                           max_to_keep=keep)
    for step in (1, 2):
      try:
        checkpointing.save(manager, state.replace(step=jnp.int32(step)),
                           jax.random.key(0))
      except checkpointing.CheckpointWriteError:
        assert keep == 0  # orbax deleted the step before its digests.
    kept[keep] = manager.all_steps()
    manager.close()
  assert list(kept[1]) == [2]
  assert not kept[0] or len(kept[0]) != 1, kept[0]


# Configs that select behaviour: the outer optimizer and its schedule.


def _shipped_configs():
  out = [(f'maml_sine:{a}', maml_sine.get_config(a))
         for a in (None,) + tuple(maml_sine.ALGORITHMS)]
  out += [(f'maml_omniglot:{a}', maml_omniglot.get_config(a))
          for a in (None, 'mamlpp') + tuple(maml_omniglot.PROTOCOLS)]
  return out


def _expected_schedule(config):
  """The paper's outer step size at step t, written out by hand."""
  lr, total = config.meta_lr, config.num_train_steps
  if config.train_step == 'reptile':  # Nichol et al.: linear to 0.
    return 'sgd', lambda t: lr * (1 - t / total)
  if config.train_step == 'mamlpp' and config.msl_anneal_steps is not None:
    # Antoniou et al. (MAML++, its multi-step loss annealed): cosine to 0.
    return 'adam', lambda t: lr * 0.5 * (1 + math.cos(math.pi * t / total))
  # Finn et al.: Adam, constant; also the sinusoid default, MAML with
  # MAML++'s multi-step loss held uniform (msl_anneal_steps None) and its
  # learned rates.
  return 'adam', lambda t: lr


@pytest.mark.parametrize('name,config', [pytest.param(n, c, id=n)
                                         for n, c in _shipped_configs()])
def test_shipped_config_anneals_its_outer_step_as_its_paper(name, config):
  """Pins: `get_config('reptile')` with a constant (or cosine) outer step,
  Adam instead of plain SGD outer steps for Reptile, MAML++ without its
  cosine annealing, and the schedule kinds in `train.meta_lr_schedule`
  (to 0 at `num_train_steps`, not elsewhere).

  The optimizer's kind shows in one update of a gradient of 2: SGD moves
  by ``2 lr``, Adam by ``lr`` (its first step is the gradient's sign).
  """
  del name
  kind, expected = _expected_schedule(config)
  schedule = train.meta_lr_schedule(config)
  total = config.num_train_steps
  for t in (0, total // 4, total // 2, 3 * total // 4, total):
    assert float(schedule(t)) == pytest.approx(expected(t), rel=1e-5,
                                               abs=1e-12), t
  tx = train.create_optimizer(config)
  params = {'w': jnp.zeros(())}
  if config.get('rate_meta_lr') is not None:
    params['inner_lr'] = jnp.zeros(())
  updates, _ = tx.update(jax_tree_full(params, 2.0), tx.init(params), params)
  step = float(-updates['w'])
  assert step == pytest.approx(config.meta_lr * (2 if kind == 'sgd' else 1),
                               rel=1e-5)
  if 'inner_lr' in params:  # Learned rates take their own step size.
    assert float(-updates['inner_lr']) == pytest.approx(
        config.rate_meta_lr * (2 if kind == 'sgd' else 1), rel=1e-5)


def _every_shipped_variant():
  """Every config file with every argument it documents
  (`config_variants.VARIANTS`), and each sinusoid algorithm quick."""
  out = []
  for name, args in config_variants.VARIANTS.items():
    if name == 'maml_sine':
      args += tuple(f'{a},quick' for a in maml_sine.ALGORITHMS)
    skip = () if config_variants.available(name) else pytest.mark.skip(
        reason=f'needs {config_variants.NEEDS[name]}')
    out += [pytest.param(name, arg, id=f'{name}:{arg}', marks=skip)
            for arg in args]
  return out


@pytest.mark.parametrize('name,arg', _every_shipped_variant())
def test_shipped_schedule_fields_agree_with_each_other(name, arg):
  """Pins a shipped config's schedule: every interval a multiple of
  `steps_per_call` (docs/configs.md), evaluation and checkpoints evenly
  spaced up to `num_train_steps` (the last meta-step is evaluated and saved
  on the cadence, not by a short last interval), logging on every
  evaluation step, MAML++'s annealing and first-order phase inside the
  run, at least one checkpoint kept, and a jaxline config's own intervals
  and length equal to ours. A typo in one of them (eval_every_steps=150
  in a 200-step run, a 23,333-step phase in a 2,000-step run) passes
  validation and shows only in a long run's curves."""
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  ours = config_variants.ours(config)
  total, every = ours.num_train_steps, ours.steps_per_call
  for field in ('log_every_steps', 'eval_every_steps',
                'checkpoint_every_steps', 'num_train_steps'):
    assert ours[field] % every == 0, (field, ours[field], every)
  for field in ('eval_every_steps', 'checkpoint_every_steps'):
    assert total % ours[field] == 0, (field, ours[field], total)
  assert ours.eval_every_steps % ours.log_every_steps == 0
  for field in ('msl_anneal_steps', 'first_order_steps'):
    if ours.get(field) is not None:
      assert 0 <= ours[field] <= total, (field, ours[field], total)
  assert ours.max_checkpoints_to_keep >= 1
  if 'experiment_kwargs' in config:  # jaxline's config around ours.
    assert every == 1
    assert config.training_steps == total
    assert config.save_checkpoint_interval == ours.checkpoint_every_steps
    assert config.log_train_data_interval == ours.log_every_steps
    assert config.random_seed == ours.seed


def jax_tree_full(tree, value):
  return {k: jnp.full_like(v, value) for k, v in tree.items()}


def test_every_algorithm_has_a_config_the_boundaries_use():
  """Pins: an algorithm registered by the package for which no valid quick
  config exists (the boundary cases above would then fail for a reason
  other than the field under test)."""
  for entry in package_names(REGISTRIES['train_step']):
    config = _base_config('train_step', entry)
    config_validation.validate(config)
    assert config.train_step == entry
