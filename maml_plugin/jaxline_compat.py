"""Two JAX names jaxline 0.0.8 calls and JAX 0.10 removed, with their old
semantics, defined only where they are missing.

jaxline 0.0.8 (its newest release) calls ``jax.device_put_sharded`` (to
put the train key and restored state on every local device) and
``jax.tree_map`` (in its in-memory checkpointer).
`maml_plugin.jaxline_experiment` calls `apply()` before it imports
jaxline, so jaxline runs unchanged on the JAX this package requires::

  from maml_plugin import jaxline_compat
  jaxline_compat.apply()          # a no-op on a JAX that still has both
  from jaxline import platform

`apply()` adds the names to the `jax` module (nothing else is changed, and
a name JAX still defines is left alone): a process that imports
`maml_plugin.jaxline_experiment` sees ``jax.tree_map`` and
``jax.device_put_sharded`` defined. `added()` lists the names it added.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

_ADDED: list[str] = []


def tree_map(f, tree, *rest, is_leaf=None):
  """``jax.tree_map`` as it was: an alias of `jax.tree.map`."""
  return jax.tree.map(f, tree, *rest, is_leaf=is_leaf)


def device_put_sharded(shards: Sequence[Any], devices: Sequence[Any]):
  """``jax.device_put_sharded`` as it was: stacks `shards` (pytrees of one
  structure, one per device) along a new leading axis, row ``i`` on
  ``devices[i]``; the result is what ``jax.pmap`` takes and returns."""
  if len(shards) != len(devices):
    raise ValueError(f'device_put_sharded: {len(shards)} shards for '
                     f'{len(devices)} devices; must be one per device')
  sharding = NamedSharding(Mesh(np.asarray(devices), ('devices',)),
                           P('devices'))

  def put(*rows):
    if jax.dtypes.issubdtype(getattr(rows[0], 'dtype', None),
                             jax.dtypes.prng_key):
      impl = jax.random.key_impl(rows[0])
      data = put(*[jax.random.key_data(r) for r in rows])
      return jax.random.wrap_key_data(data, impl=impl)
    return jax.device_put(np.stack([np.asarray(r) for r in rows]), sharding)

  return jax.tree.map(put, *shards)


def apply() -> None:
  """Defines ``jax.tree_map`` and ``jax.device_put_sharded`` if missing."""
  for name, fn in (('tree_map', tree_map),
                   ('device_put_sharded', device_put_sharded)):
    if not hasattr(jax, name):
      setattr(jax, name, fn)
      _ADDED.append(name)


def added() -> list[str]:
  """The names `apply()` added to `jax` (empty on an older JAX)."""
  return list(_ADDED)
