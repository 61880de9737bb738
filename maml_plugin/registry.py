"""A registry of named things (train steps), found by name from configs.

Usage::

  TRAIN_STEPS = Registry('train_step')

  @TRAIN_STEPS.register('maml')
  def make_maml_train_step(*, loss_fn, tx, inner_lr, num_inner_steps): ...

  factory = TRAIN_STEPS.lookup(config.train_step)
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar('T', bound=Callable)


class Registry:
  """Maps names to factories; refuses duplicates, names the known on a miss."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, Callable] = {}

  def register(self, name: str) -> Callable[[T], T]:
    if not isinstance(name, str) or not name:
      raise ValueError(f'{self.kind} name={name!r}: must be a non-empty str')

    def decorator(factory: T) -> T:
      if name in self._entries:
        raise ValueError(
            f'{self.kind}={name!r} is already registered '
            f'(by {self._entries[name].__module__}.'
            f'{self._entries[name].__qualname__}); pick another name')
      self._entries[name] = factory
      return factory

    return decorator

  def lookup(self, name: str) -> Callable:
    if not isinstance(name, str) or name not in self._entries:
      raise ValueError(f'{self.kind}={name!r} is not registered; known: '
                       f'{", ".join(sorted(self._entries))}')
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
