"""Checks a config before any work starts; a bad field is one clear line.

Usage::

  validate(config)   # raises ConfigError('config.inner_lr=-0.1: must be ...')

Every field a config may hold is listed in `FIELDS` (all tasks) or
`TASK_FIELDS[config.task]` with what is allowed; a field not listed is an
error too (a typo must not be silently ignored), and so is a field of another
task (it would be silently unused).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from maml_plugin import train_steps
from maml_plugin.tasks import omniglot


class ConfigError(ValueError):
  """A config field holds a value that is not allowed."""


Check = Callable[[Any], bool]


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v))


def positive_int(v) -> bool:
  return _is_int(v) and v > 0


def non_negative_int(v) -> bool:
  return _is_int(v) and v >= 0


def positive_real(v) -> bool:
  return _is_real(v) and v > 0


def boolean(v) -> bool:
  return isinstance(v, bool)


def positive_int_tuple(v) -> bool:
  return (isinstance(v, (tuple, list)) and len(v) > 0
          and all(positive_int(x) for x in v))


def one_of(*choices) -> Check:
  return lambda v: v in choices


def string(v) -> bool:
  return isinstance(v, str)


TASKS = ('sinusoid', 'omniglot')

# field -> (check, what is allowed); fields of every task.
FIELDS: dict[str, tuple[Check, str]] = {
    'task': (one_of(*TASKS), 'one of ' + ', '.join(repr(t) for t in TASKS)),
    'train_step': (lambda v: v in train_steps.TRAIN_STEPS,
                   'a registered train step'),
    'num_support': (positive_int, 'an int > 0'),
    'num_query': (positive_int, 'an int > 0'),
    'meta_batch_size': (positive_int, 'an int > 0'),
    'inner_lr': (positive_real, 'a finite number > 0'),
    'num_inner_steps': (positive_int, 'an int > 0'),
    'first_order': (boolean, 'True or False'),
    'meta_lr': (positive_real, 'a finite number > 0'),
    'num_train_steps': (positive_int, 'an int > 0'),
    'steps_per_call': (positive_int, 'an int > 0'),
    'seed': (non_negative_int, 'an int >= 0'),
    'log_every_steps': (positive_int, 'an int > 0'),
    'eval_every_steps': (positive_int, 'an int > 0'),
    'checkpoint_every_steps': (positive_int, 'an int > 0'),
    'max_checkpoints_to_keep': (positive_int, 'an int > 0'),
    'eval_seed': (non_negative_int, 'an int >= 0'),
    'num_eval_tasks': (lambda v: _is_int(v) and v >= 2, 'an int >= 2'),
    'eval_num_query': (positive_int, 'an int > 0'),
    'eval_num_inner_steps': (non_negative_int, 'an int >= 0'),
}

_SPLITS = 'one of ' + ', '.join(repr(s) for s in omniglot.SPLITS)

# Fields of one task only: task -> field -> (check, what is allowed).
TASK_FIELDS: dict[str, dict[str, tuple[Check, str]]] = {
    'sinusoid': {
        'hidden_sizes': (positive_int_tuple, 'a non-empty tuple of ints > 0'),
        'num_plot_tasks': (non_negative_int, 'an int >= 0'),
    },
    'omniglot': {
        'data_dir': (string, "a folder path, or '' for $"
                     f'{omniglot.DATA_DIR_ENV}'),
        'train_split': (one_of(*omniglot.SPLITS), _SPLITS),
        'eval_split': (one_of(*omniglot.SPLITS), _SPLITS),
        'ways': (lambda v: _is_int(v) and v >= 2, 'an int >= 2'),
        'num_filters': (positive_int, 'an int > 0'),
        'conv_downsample': (one_of('stride', 'maxpool'),
                            "'stride' or 'maxpool'"),
        'eval_task_batch_size': (positive_int, 'an int > 0'),
    },
}

# Fields whose value must divide by `steps_per_call`, so that periodic actions
# see the state of exactly the step they fire on.
_ALIGNED = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
            'num_train_steps')


def validate(config) -> None:
  """Raises `ConfigError` naming the first bad field, its value and the rule."""
  values = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  check, allowed = FIELDS['task']
  if not check(values.get('task')):
    raise ConfigError(f'config.task={values.get("task")!r}: must be {allowed}')
  fields = {**FIELDS, **TASK_FIELDS[values['task']]}
  for name in values:
    if name not in fields:
      raise ConfigError(f'config.{name}: unknown field for task '
                        f'{values["task"]!r}; known fields: '
                        f'{", ".join(sorted(fields))}')
  for name, (check, allowed) in fields.items():
    if name not in values:
      raise ConfigError(f'config.{name} is missing: must be {allowed}')
    value = values[name]
    if not check(value):
      if name == 'train_step':
        allowed = 'one of ' + ', '.join(
            repr(n) for n in train_steps.TRAIN_STEPS.names())
      raise ConfigError(f'config.{name}={value!r}: must be {allowed}')
  every = values['steps_per_call']
  for name in _ALIGNED:
    if values[name] % every:
      raise ConfigError(
          f'config.{name}={values[name]!r}: must be a multiple of '
          f'config.steps_per_call={every}')
