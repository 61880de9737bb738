"""Typed, checked config fields: what a registered entry reads from a config.

An algorithm, a task family or a model declares the config fields it reads
as a frozen dataclass that subclasses `Fields`; each field names its check
and what it allows (`field`, or the common kinds `integer`, `positive`,
`choice`, `flag`), and building the dataclass checks every field::

  @dataclasses.dataclass(frozen=True, kw_only=True)
  class SinusoidFields(fields.Fields):
    num_support: int = fields.integer()
    num_plot_tasks: int = fields.integer(3, at_least=0)

  SinusoidFields(num_support=0)   # FieldError: num_support=0: must be ...
  SinusoidFields.from_config(config)   # the config's fields of those names

A field without a default is required. `Fields.check` is the hook for
checks across fields. A field that does not change what training computes
(how often to log, which tasks to evaluate, a memory knob giving the same
update) says so with ``changes_training=False``: a run resumed from a
checkpoint may change it, while any other field must keep the value the
checkpoint was trained with (`maml_plugin.workdir`). Errors name the field, the value and the rule in one
line; `config_validation` prefixes ``config.``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping

Check = Callable[[Any], bool]


class FieldError(ValueError):
  """A field holds a value that is not allowed, is missing or is unknown.

  The message is one line that starts with the field's name, e.g.
  ``inner_lr=-0.1: must be a finite number > 0``; the config layer
  prefixes ``config.``.
  """


def bad_value(name: str, value: Any, allowed: str) -> FieldError:
  return FieldError(f'{name}={value!r}: must be {allowed}')


# Whether a field changes what training computes: True, False, or a
# function of the config's values (e.g. the run length matters only to a
# decaying learning-rate schedule).
ChangesTraining = bool | Callable[[Mapping[str, Any]], bool]


def field(default: Any = dataclasses.MISSING, *, check: Check,
          allowed: str, changes_training: ChangesTraining = True) -> Any:
  """A dataclass field checked by `check`; `allowed` says what passes;
  `changes_training` says whether a resumed run must keep its value."""
  return dataclasses.field(
      default=default, metadata={'check': check, 'allowed': allowed,
                                 'changes_training': changes_training})


def flag(default: bool = False, *,
         changes_training: ChangesTraining = True) -> Any:
  """A True-or-False field."""
  return field(default, check=boolean, allowed='True or False',
               changes_training=changes_training)


def integer(default: Any = dataclasses.MISSING, *, at_least: int = 1,
            changes_training: ChangesTraining = True) -> Any:
  """An int field, at least `at_least`."""
  return field(default, check=int_at_least(at_least),
               allowed='an int > 0' if at_least == 1
               else f'an int >= {at_least}',
               changes_training=changes_training)


def positive(default: Any = dataclasses.MISSING, *,
             changes_training: ChangesTraining = True) -> Any:
  """A finite number > 0."""
  return field(default, check=positive_real, allowed='a finite number > 0',
               changes_training=changes_training)


def choice(*choices, default: Any = dataclasses.MISSING,
           changes_training: ChangesTraining = True) -> Any:
  """One of `choices`."""
  return field(default, check=one_of(*choices),
               allowed=describe_choices(*choices),
               changes_training=changes_training)


class Fields:
  """Base of a frozen dataclass of config fields (see module docstring).

  Subclass it with ``@dataclasses.dataclass(frozen=True, kw_only=True)``
  and declare each field with `field`; override `check` for rules that
  involve several fields (raise `FieldError`).
  """

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if 'check' in f.metadata and not f.metadata['check'](value):
        raise bad_value(f.name, value, f.metadata['allowed'])
    self.check()

  def check(self) -> None:
    """Checks across fields; every field alone has passed its own."""

  @classmethod
  def names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]

  @classmethod
  def allowed(cls, name: str) -> str:
    return {f.name: f.metadata.get('allowed', 'any value')
            for f in dataclasses.fields(cls)}[name]

  @classmethod
  def training_names(cls, values: Mapping[str, Any]) -> list[str]:
    """The fields whose value changes what training computes, given the
    config's `values` (see `field`'s `changes_training`)."""
    out = []
    for f in dataclasses.fields(cls):
      changes = f.metadata.get('changes_training', True)
      if changes(values) if callable(changes) else changes:
        out.append(f.name)
    return out

  @classmethod
  def defaults(cls) -> dict[str, Any]:
    """The default of each field that has one."""
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}

  @classmethod
  def build(cls, values: Mapping[str, Any], owner: str = ''):
    """From keyword `values`: a name it does not declare is an error that
    lists the names it does (`owner` says whose they are)."""
    unknown = sorted(set(values) - set(cls.names()))
    if unknown:
      raise FieldError(
          f'{unknown[0]}={values[unknown[0]]!r}: not a field of '
          f'{owner or cls.__name__}; its fields: '
          f'{", ".join(cls.names()) or "(none)"}')
    for f in dataclasses.fields(cls):
      if f.default is dataclasses.MISSING and f.name not in values:
        raise FieldError(f'{f.name} is missing: must be '
                         f'{f.metadata.get("allowed", "set")}')
    return cls(**values)

  @classmethod
  def from_config(cls, config: Mapping[str, Any]):
    """The fields of `config` (a dict or ConfigDict) that this declares."""
    values = config.to_dict() if hasattr(config, 'to_dict') else config
    return cls.build({n: values[n] for n in cls.names() if n in values})


# Checks, with the wording config errors use for them.


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v))


def positive_int(v) -> bool:
  return _is_int(v) and v > 0


def non_negative_int(v) -> bool:
  return _is_int(v) and v >= 0


def int_at_least(n: int) -> Check:
  return lambda v: _is_int(v) and v >= n


def positive_real(v) -> bool:
  return _is_real(v) and v > 0


def boolean(v) -> bool:
  return isinstance(v, bool)


def string(v) -> bool:
  return isinstance(v, str)


def positive_int_tuple(v) -> bool:
  return (isinstance(v, (tuple, list)) and len(v) > 0
          and all(positive_int(x) for x in v))


def one_of(*choices) -> Check:
  # The same type too: 1.0 and True equal 1, and are not the choice 1.
  return lambda v: any(type(v) is type(c) and v == c for c in choices)


def or_none(check: Check) -> Check:
  return lambda v: v is None or check(v)


def describe_choices(*choices) -> str:
  return 'one of ' + ', '.join(repr(c) for c in choices)


def regex(v) -> bool:
  if not isinstance(v, str) or not v:
    return False
  try:
    re.compile(v)
  except re.error:
    return False
  return True


regex_or_none = or_none(regex)
