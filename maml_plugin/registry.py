"""Registries of named things, found by name from configs and open to users.

Three registries hold what a config names: train steps
(`maml_plugin.algorithms.TRAIN_STEPS`, ``config.train_step``), task
families (`maml_plugin.tasks.TASKS`, ``config.task``) and models
(`maml_plugin.models.MODELS`, ``config.model``). Each entry is a factory
and the typed config fields it reads (a `fields.Fields` dataclass)::

  @TRAIN_STEPS.register('maml', fields=MAMLHParams)
  def make_maml(hparams: MAMLHParams, *, loss_fn, tx, metric_fn=None): ...

  factory = TRAIN_STEPS.lookup(config.train_step)
  hparams = TRAIN_STEPS.fields(config.train_step).from_config(config)

Your own module registers the same way; list it in ``config.imports`` so
that the trainer imports it before it looks names up.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from maml_plugin import fields as fields_lib

T = TypeVar('T', bound=Callable)


class Registry:
  """Maps names to factories; refuses duplicates, names the known on a miss.

  Attributes:
    kind: what the names name, as in the config (``'train_step'``).
    default_fields: the `fields.Fields` of an entry registered without any.
  """

  def __init__(self, kind: str,
               default_fields: type[fields_lib.Fields] = fields_lib.Fields):
    self.kind = kind
    self.default_fields = default_fields
    self._entries: dict[str, tuple[Callable, type[fields_lib.Fields]]] = {}

  def register(self, name: str,
               fields: type[fields_lib.Fields] | None = None
               ) -> Callable[[T], T]:
    """Decorator: registers a factory as `name`, reading `fields`."""
    if not isinstance(name, str) or not name:
      raise ValueError(f'{self.kind} name={name!r}: must be a non-empty str')
    if fields is not None and not (isinstance(fields, type) and
                                   issubclass(fields, fields_lib.Fields)):
      raise ValueError(f'{self.kind}={name!r}: fields={fields!r} must be a '
                       'dataclass that subclasses maml_plugin.fields.Fields')

    def decorator(factory: T) -> T:
      if name in self._entries:
        known = self._entries[name][0]
        raise ValueError(
            f'{self.kind}={name!r} is already registered '
            f'(by {known.__module__}.{known.__qualname__}); pick another name')
      self._entries[name] = (factory, fields or self.default_fields)
      return factory

    return decorator

  def _entry(self, name: str):
    if not isinstance(name, str) or name not in self._entries:
      raise ValueError(f'{self.kind}={name!r} is not registered; known: '
                       f'{", ".join(sorted(self._entries))}')
    return self._entries[name]

  def lookup(self, name: str) -> Callable:
    """The factory registered as `name`."""
    return self._entry(name)[0]

  def fields(self, name: str) -> type[fields_lib.Fields]:
    """The config fields the entry `name` reads."""
    return self._entry(name)[1]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name) -> bool:
    return isinstance(name, str) and name in self._entries
