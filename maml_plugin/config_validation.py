"""Checks a config before any work starts; a bad field is one clear line.

Usage::

  validate(config)   # raises ConfigError('config.inner_lr=-0.1: must be ...')

A config names a task family (``config.task``), a model (``config.model``)
and an algorithm (``config.train_step``), each found in its registry
(`maml_plugin.tasks.TASKS`, `maml_plugin.models.MODELS`,
`maml_plugin.algorithms.TRAIN_STEPS`); ``config.imports`` lists modules to
import first, so that a user's own entries are registered. The known
fields are the trainer's (`TrainerFields`) and the fields each registered
entry declares (a `fields.Fields` dataclass); each is checked by its
declaration. A field nobody declares is an error (a typo must not be
silently ignored), and so is a field of another task family or model. A
hyper-parameter of another algorithm is refused unless left at its
default there, so ``--config.train_step=fomaml`` works on a MAML config
while a value somebody chose is never silently ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import re

from maml_plugin import fields
from maml_plugin import spikes
from maml_plugin.algorithms import TRAIN_STEPS
from maml_plugin.models import MODELS
from maml_plugin.tasks import TASKS


class ConfigError(ValueError):
  """A config field holds a value that is not allowed."""


def _module_names(v) -> bool:
  return isinstance(v, (list, tuple)) and all(
      isinstance(m, str) and m for m in v)


def _above_one(v) -> bool:
  return fields.positive_real(v) and v > 1


def _factor(default: float):
  """A spike threshold: how many times the median (`maml_plugin.spikes`)."""
  return fields.field(default, check=_above_one,
                      allowed='a finite number > 1 (times the median)',
                      changes_training=False)


def _schedule_decays(values) -> bool:
  return values.get('meta_lr_schedule', 'constant') != 'constant'


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainerFields(fields.Fields):
  """The fields the trainer itself reads (`maml_plugin.train`)."""

  # What the config uses, by registered name (checked against the
  # registries in `validate`), and the modules that register them.
  task: str = fields.field(check=fields.string, allowed='a registered task')
  model: str = fields.field(check=fields.string,
                            allowed='a registered model')
  train_step: str = fields.field(check=fields.string,
                                 allowed='a registered train step')
  imports: tuple[str, ...] = fields.field(
      (), check=_module_names,
      allowed='a list of module names to import before the names are '
      'looked up', changes_training=False)
  # Outer loop.
  meta_batch_size: int = fields.integer()
  meta_lr: float = fields.positive()
  meta_optimizer: str = fields.choice('adam', 'sgd', default='adam')
  meta_lr_schedule: str = fields.choice('constant', 'linear', 'cosine',
                                         default='constant')
  # The meta-gradient's global norm is clipped to this before the outer
  # optimizer sees it (optax.clip_by_global_norm); None: no clipping.
  max_meta_grad_norm: float | None = fields.field(
      None, check=fields.or_none(fields.positive_real),
      allowed='a number > 0, or None (no clipping)')
  # The run's length; a decaying schedule reaches 0 at its end.
  num_train_steps: int = fields.integer(changes_training=_schedule_decays)
  steps_per_call: int = fields.integer(changes_training=False)
  seed: int = fields.integer(at_least=0)
  on_nonfinite: str = fields.choice('stop', 'skip', changes_training=False)
  # Blow-ups (`maml_plugin.spikes`): a meta-loss or held-out loss far above
  # its recent median. Detection changes nothing; 'stop' and 'rollback'
  # act on a spike.
  on_spike: str = fields.choice(*spikes.ON_SPIKE, default='warn',
                                changes_training=False)
  spike_factor: float = _factor(spikes.SPIKE_FACTOR)
  eval_spike_factor: float = _factor(spikes.EVAL_SPIKE_FACTOR)
  spike_window: int = fields.integer(spikes.SPIKE_WINDOW,
                                     changes_training=False)
  # Periodic actions.
  log_every_steps: int = fields.integer(changes_training=False)
  eval_every_steps: int = fields.integer(changes_training=False)
  checkpoint_every_steps: int = fields.integer(changes_training=False)
  checkpoint_every_secs: float | None = fields.field(
      None, check=fields.or_none(fields.positive_real),
      allowed='a number of seconds > 0, or None (steps only)',
      changes_training=False)
  max_checkpoints_to_keep: int = fields.integer(changes_training=False)
  # Held-out evaluation.
  eval_seed: int = fields.integer(at_least=0, changes_training=False)
  num_eval_tasks: int = fields.integer(at_least=2, changes_training=False)
  eval_num_query: int = fields.integer(changes_training=False)
  eval_num_inner_steps: int = fields.integer(at_least=0,
                                             changes_training=False)
  eval_task_batch_size: int | None = fields.field(
      None, check=fields.or_none(fields.positive_int),
      allowed='an int > 0, or None (all held-out tasks at once)',
      changes_training=False)


# The registries a config names entries of, by the field that names them.
REGISTRIES = {'task': TASKS, 'model': MODELS, 'train_step': TRAIN_STEPS}

# Fields whose value must divide by `steps_per_call`, so that periodic actions
# see the state of exactly the step they fire on.
_ALIGNED = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
            'num_train_steps')


def import_modules(config) -> None:
  """Imports the modules ``config.imports`` names (they register entries)."""
  names = config.get('imports') or ()
  if not _module_names(names):
    raise ConfigError(f'config.imports={names!r}: must be '
                      f'{TrainerFields.allowed("imports")}')
  for name in names:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ConfigError(f'config.imports: cannot import {name!r} '
                        f'({type(e).__name__}: {e}); is its folder on the '
                        'Python path (the current directory with '
                        'python -m)?') from None


def config_error(error: Exception, config) -> ConfigError:
  """A library's error about fields of `config` as a `ConfigError`: every
  field of `config` it names (``name=`` or ``name +``, as `fields.FieldError`
  messages and the algorithms' and task families' errors write them) gets
  ``config.`` before it, as does a `fields.FieldError`'s first word (the
  field it is about, set or missing). Naming the config is this layer's job: the
  library says ``head_filter='^x/': must select ...`` to a caller of
  `make_algorithm` and ``config.head_filter=...`` here."""
  names = sorted((str(k) for k in config.keys()), key=len, reverse=True)
  message = str(error)
  if names:
    message = re.sub(
        r"(?<![\w.'\"])(" + '|'.join(map(re.escape, names)) + r')(?=\s*[=+])',
        r'config.\1', message)
  if isinstance(error, fields.FieldError) and not message.startswith(
      'config.'):
    message = 'config.' + message  # Its first word is a field's name.
  return ConfigError(message)


def _build(declared: type[fields.Fields], values: dict):
  """`declared` from the config's values; its errors as `ConfigError`s."""
  try:
    return declared.from_config(values)
  except fields.FieldError as e:
    raise config_error(e, values) from None


def _algorithm_fields() -> dict[str, list[str]]:
  """Every registered algorithm's fields: field -> the algorithms."""
  out: dict[str, list[str]] = {}
  for name in TRAIN_STEPS.names():
    for field in TRAIN_STEPS.fields(name).names():
      out.setdefault(field, []).append(name)
  return out


def validate(config, *, num_devices: int = 1) -> None:
  """Raises `ConfigError` naming the first bad field, its value and the rule.

  Imports ``config.imports`` first. `num_devices` is the number of devices
  the task axis is sharded over.
  """
  values = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  import_modules(values)
  for kind, registry in REGISTRIES.items():
    if values.get(kind) not in registry:
      known = ', '.join(repr(n) for n in registry.names())
      if kind not in values:
        raise ConfigError(f'config.{kind} is missing: must be one of {known}')
      raise ConfigError(f'config.{kind}={values[kind]!r}: must be one of '
                        f'{known}')
  used = {kind: registry.fields(values[kind])
          for kind, registry in REGISTRIES.items()}
  of_algorithms = _algorithm_fields()
  known = set(TrainerFields.names()).union(
      used['task'].names(), used['model'].names(), of_algorithms)
  for name in values:
    if name not in known:
      raise ConfigError(
          f'config.{name}: unknown field for task {values["task"]!r}, model '
          f'{values["model"]!r} and train_step {values["train_step"]!r}; '
          f'known fields: {", ".join(sorted(known))}')
  trainer = _build(TrainerFields, values)
  for declared in used.values():
    _build(declared, values)
  own = set(TrainerFields.names()).union(*(d.names() for d in used.values()))
  for name in sorted(set(values) - own):
    users = of_algorithms[name]
    # A field left at its default does nothing on any algorithm, so
    # `--config.train_step=fomaml` works on a MAML config; a value
    # somebody chose would be silently ignored, which is an error.
    defaults = [TRAIN_STEPS.fields(u).defaults().get(name,
                                                     dataclasses.MISSING)
                for u in users]
    if values[name] in defaults:
      continue
    raise ConfigError(
        f'config.{name}={values[name]!r}: not used by '
        f'config.train_step={values["train_step"]!r}; remove it or pick '
        f'one of {", ".join(repr(n) for n in users)}')
  _check_across_fields(trainer, values.get('task_batch_size'), num_devices)


def follow_train_step(config, file_config, set_fields) -> list[str]:
  """``--config.train_step=NAME`` on a config file written for another
  algorithm: the fields of the file's algorithm that NAME does not use,
  left at the file's values (not in `set_fields`, the fields the command
  line set), are removed from `config`, so that NAME trains with the rest
  of the file (its task, model, inner loop and outer loop). A field the
  command line set is kept: `validate` still refuses it if NAME does not
  use it. Returns the names removed (none when the train step is the
  file's).
  """
  old, new = file_config.get('train_step'), config.get('train_step')
  if old == new or old not in TRAIN_STEPS or new not in TRAIN_STEPS:
    return []
  keep = set(TrainerFields.names()).union(
      TRAIN_STEPS.fields(new).names(),
      *(REGISTRIES[kind].fields(config[kind]).names()
        for kind in ('task', 'model') if config.get(kind) in REGISTRIES[kind]))
  removed = [name for name in TRAIN_STEPS.fields(old).names()
             if name in config and name not in keep and name not in set_fields
             and name in file_config and config[name] == file_config[name]]
  with config.unlocked() if hasattr(config, 'unlocked') else _nothing():
    for name in removed:
      del config[name]
  return removed


@contextlib.contextmanager
def _nothing():
  yield


def _check_across_fields(trainer: TrainerFields, task_batch, num_devices):
  every = trainer.steps_per_call
  for name in _ALIGNED:
    if getattr(trainer, name) % every:
      raise ConfigError(
          f'config.{name}={getattr(trainer, name)!r}: must be a multiple of '
          f'config.steps_per_call={every}')
  if trainer.meta_batch_size % num_devices:
    raise ConfigError(
        f'config.meta_batch_size={trainer.meta_batch_size!r}: must be a '
        f'multiple of the device count {num_devices} (the task axis is '
        f'sharded over the devices)')
  if task_batch is not None and trainer.meta_batch_size % task_batch:
    raise ConfigError(
        f'config.task_batch_size={task_batch!r}: must divide '
        f'config.meta_batch_size={trainer.meta_batch_size}')
  if task_batch is not None and task_batch % num_devices:
    raise ConfigError(
        f'config.task_batch_size={task_batch!r}: must be a multiple of the '
        f'device count {num_devices} (each task batch is sharded over the '
        f'devices)')


def training_fields(values) -> list[str]:
  """The fields of a config (a dict of its values) that change what training
  computes, in declaration order: the trainer's, then those of its task,
  model and algorithm (each field declares it, `fields.field`)."""
  out = TrainerFields.training_names(values)
  for kind, registry in REGISTRIES.items():
    if values.get(kind) in registry:
      out += [n for n in registry.fields(values[kind]).training_names(values)
              if n not in out]
  return out


def _all_fields() -> dict[str, str]:
  """Every field anything registered declares -> what it allows (for
  command-line overrides, before the config's names are known)."""
  out = {name: TrainerFields.allowed(name) for name in TrainerFields.names()}
  for registry in REGISTRIES.values():
    for entry in registry.names():
      declared = registry.fields(entry)
      for name in declared.names():
        out.setdefault(name, declared.allowed(name))
  return out


def check_override(name: str, value: str) -> None:
  """Checks a command-line override ``--config.<name>=<value>`` by name.

  Raises `ConfigError` for a field that nothing registered declares, with
  the closest known name.
  """
  field = name.split('.', 1)[0]
  known = _all_fields()
  if field not in known:
    close = difflib.get_close_matches(field, known, n=1)
    hint = f'did you mean config.{close[0]}? ' if close else ''
    raise ConfigError(f'config.{name}={value}: unknown field; {hint}known '
                      f'fields: {", ".join(sorted(known))}')


def describe_parse_error(name: str, value: str) -> str:
  """The one line for an override whose value does not parse as its type."""
  field = name.split('.', 1)[0]
  allowed = _all_fields().get(field, f'of the type config.{field} has')
  return f'config.{name}={value!r}: must be {allowed}'
