"""Checks a config before any work starts; a bad field is one clear line.

Usage::

  validate(config)   # raises ConfigError('config.inner_lr=-0.1: must be ...')

Every field a config may hold is listed in `FIELDS` (all tasks) or
`TASK_FIELDS[config.task]` with what is allowed; a field not listed is an
error too (a typo must not be silently ignored), and so is a field of another
task (it would be silently unused). Fields in `OPTIONAL` may be absent (the
code's default applies); an optional hyper-parameter of one algorithm (e.g.
`head_filter`) set to anything but its default is an error on a config whose
`train_step` does not take it, since it would be ignored.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
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


def regex_or_none(v) -> bool:
  if v is None:
    return True
  if not isinstance(v, str) or not v:
    return False
  try:
    re.compile(v)
  except re.error:
    return False
  return True


def regex(v) -> bool:
  return v is not None and regex_or_none(v)


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
    # Optional (see OPTIONAL).
    'meta_optimizer': (one_of('adam', 'sgd'), "one of 'adam', 'sgd'"),
    'meta_lr_schedule': (one_of('constant', 'linear', 'cosine'),
                         "one of 'constant', 'linear', 'cosine'"),
    'remat_inner_steps': (boolean, 'True or False'),
    'task_batch_size': (lambda v: v is None or positive_int(v),
                        'an int > 0 that divides config.meta_batch_size, '
                        'or None (all tasks in one vmap)'),
    'inner_optimizer': (one_of('sgd', 'adam'), "one of 'sgd', 'adam'"),
    'head_filter': (regex_or_none,
                    'None (the last layer) or a non-empty regular expression '
                    'searched in parameter paths like layers/2/kernel/value'),
    'msl_anneal_steps': (non_negative_int, 'an int >= 0 (0: MSL off)'),
    'learn_inner_lr': (boolean, 'True or False'),
    'first_order_steps': (non_negative_int, 'an int >= 0'),
    'rate_meta_lr': (positive_real, 'a finite number > 0'),
    'per_step_bn': (boolean, 'True or False'),
    'per_step_bn_filter': (regex,
                           'a non-empty regular expression searched in '
                           'parameter paths like blocks/0/scale/value'),
    'on_nonfinite': (one_of('stop', 'skip'), "one of 'stop', 'skip'"),
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
        'transductive': (boolean, 'True or False'),
    },
}

# Fields that may be absent: the trainer's or the train step's default applies.
OPTIONAL = frozenset({
    'first_order', 'meta_optimizer', 'meta_lr_schedule', 'remat_inner_steps',
    'task_batch_size',
    'inner_optimizer', 'head_filter', 'msl_anneal_steps', 'learn_inner_lr',
    'first_order_steps', 'rate_meta_lr', 'per_step_bn',
    'per_step_bn_filter'})
# Optional trainer fields that only make sense for some train steps.
_TRAINER_FIELDS_FOR = {'rate_meta_lr': ('mamlpp', 'metasgd')}
# Optional fields read only by the train steps that take them.
_ALGORITHM_FIELDS = OPTIONAL - {'meta_optimizer', 'meta_lr_schedule',
                                 'rate_meta_lr'}

# Fields whose value must divide by `steps_per_call`, so that periodic actions
# see the state of exactly the step they fire on.
_ALIGNED = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
            'num_train_steps')


def _defaults(name: str, train_step_names) -> list:
  """The default values of hyper-parameter `name` in those factories."""
  out = []
  for step in train_step_names:
    parameter = inspect.signature(
        train_steps.TRAIN_STEPS.lookup(step)).parameters.get(name)
    if parameter is not None and parameter.default is not parameter.empty:
      out.append(parameter.default)
  return out


def validate(config, *, num_devices: int = 1) -> None:
  """Raises `ConfigError` naming the first bad field, its value and the rule.

  `num_devices` is the number of devices the task axis is sharded over.
  """
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
      if name in OPTIONAL:
        continue
      raise ConfigError(f'config.{name} is missing: must be {allowed}')
    value = values[name]
    if not check(value):
      if name == 'train_step':
        allowed = 'one of ' + ', '.join(
            repr(n) for n in train_steps.TRAIN_STEPS.names())
      raise ConfigError(f'config.{name}={value!r}: must be {allowed}')
  taken = train_steps.hparam_names(values['train_step'])
  for name in sorted(_ALGORITHM_FIELDS & set(values)):
    if name not in taken:
      users = [n for n in train_steps.TRAIN_STEPS.names()
               if name in train_steps.hparam_names(n)]
      # A field left at its default does nothing on any algorithm, so
      # `--config.train_step=fomaml` works on a MAML config; a value
      # somebody chose would be silently ignored, which is an error.
      if values[name] in _defaults(name, users):
        continue
      raise ConfigError(
          f'config.{name}={values[name]!r}: not used by '
          f'config.train_step={values["train_step"]!r}; remove it or pick '
          f'one of {", ".join(repr(n) for n in users)}')
  for name, users in _TRAINER_FIELDS_FOR.items():
    if name in values and values['train_step'] not in users:
      raise ConfigError(
          f'config.{name}={values[name]!r}: not used by '
          f'config.train_step={values["train_step"]!r}; remove it or pick '
          f'one of {", ".join(repr(n) for n in users)}')
  every = values['steps_per_call']
  for name in _ALIGNED:
    if values[name] % every:
      raise ConfigError(
          f'config.{name}={values[name]!r}: must be a multiple of '
          f'config.steps_per_call={every}')
  if values['meta_batch_size'] % num_devices:
    raise ConfigError(
        f'config.meta_batch_size={values["meta_batch_size"]!r}: must be a '
        f'multiple of the device count {num_devices} (the task axis is '
        f'sharded over the devices)')
  task_batch = values.get('task_batch_size')
  if task_batch is not None and values['meta_batch_size'] % task_batch:
    raise ConfigError(
        f'config.task_batch_size={task_batch!r}: must divide '
        f'config.meta_batch_size={values["meta_batch_size"]}')
  if task_batch is not None and task_batch % num_devices:
    raise ConfigError(
        f'config.task_batch_size={task_batch!r}: must be a multiple of the '
        f'device count {num_devices} (each task batch is sharded over the '
        f'devices)')


def _all_fields() -> dict[str, tuple[Check, str]]:
  """The fields of every task (for command-line overrides, before the task
  of the config is known to be valid)."""
  out = dict(FIELDS)
  for fields in TASK_FIELDS.values():
    out.update(fields)
  return out


def check_override(name: str, value: str) -> None:
  """Checks a command-line override ``--config.<name>=<value>`` by name.

  Raises `ConfigError` for a field that does not exist, before ml_collections
  would raise its own multi-line error.
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
  known = _all_fields()
  allowed = known[field][1] if field in known else 'a known field'
  return f'config.{name}={value!r}: must be {allowed}'
