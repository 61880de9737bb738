"""The meta-batch's task axis over devices and hosts (JAX's own runtime).

Usage::

  initialize(coordinator_address='10.0.0.1:1234', num_processes=2,
             process_id=0)               # multi-host only; no-op otherwise
  mesh = task_mesh()                     # every device, one 'tasks' axis
  state = replicate(state, mesh)         # params and optimizer state
  batch = jax.lax.with_sharding_constraint(batch, task_sharding(mesh))

Inside the jitted step the meta-batch is sampled from the global key and
constrained to be split along its task axis, so each device (and so each host)
computes only its own share of the tasks; the mean over tasks becomes an
all-reduce, and the meta-gradient equals the one-device one up to float
summation order.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maml_plugin.config_validation import ConfigError

TASK_AXIS = 'tasks'
# How long the coordination service waits for a silent process before it
# declares the process lost and ends the others (JAX's default: 100 s). A
# process killed while the others run a collective is seen at once (its
# sockets close); this bounds the other cases (a save's barrier, a hang).
HEARTBEAT_TIMEOUT_SECONDS = 20


def initialize(*, coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_SECONDS
               ) -> None:
  """`jax.distributed.initialize` when a coordinator is given, else nothing."""
  given = {'coordinator_address': coordinator_address,
           'num_processes': num_processes, 'process_id': process_id}
  if all(v is None for v in given.values()):
    return
  for name, value in given.items():
    if value is None:
      raise ConfigError(f'--{name}=None: must be set when any of '
                        f'{", ".join("--" + n for n in given)} is set')
  if not isinstance(num_processes, int) or num_processes < 1:
    raise ConfigError(f'--num_processes={num_processes!r}: must be an int > 0')
  if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
    raise ConfigError(f'--process_id={process_id!r}: must be an int in '
                      f'[0, {num_processes})')
  if ':' not in coordinator_address:
    raise ConfigError(f'--coordinator_address={coordinator_address!r}: '
                      'must be host:port')
  # CPU devices of different processes talk through gloo; other platforms
  # bring their own collectives and ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if not isinstance(heartbeat_timeout_seconds, int) or (
      heartbeat_timeout_seconds < 1):
    raise ConfigError(f'--heartbeat_timeout_seconds='
                      f'{heartbeat_timeout_seconds!r}: must be an int > 0')
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id,
      heartbeat_timeout_seconds=heartbeat_timeout_seconds)


# What JAX's runtime says when another process of the run is gone: a CPU
# collective whose connection closed (Gloo), the coordination service's
# heartbeat timeout, or the coordinator (process 0) no longer answering.
_LOST = re.compile(r'Gloo [\w-]+ failed|Connection (reset|closed) by peer|'
                   r'heartbeat timeout|JAX distributed service detected '
                   r'fatal errors|Failed to send RPC to coordination service')
_SILENT_TASK = re.compile(r'Task (\d+) heartbeat timeout|stopped sending '
                          r'heartbeats?\):\s*(\d+)')
_COORDINATOR_GONE = 'Failed to send RPC to coordination service'


class LostProcess(NamedTuple):
  """Which process of the run is gone (None: not known) and how it was
  seen to go."""
  process: int | None
  how: str


class PeerLost(RuntimeError):
  """Another process of a multi-process run is gone; `step` is the last
  step this process completed."""

  def __init__(self, message: str, *, step: int):
    super().__init__(message)
    self.step = step


def is_peer_lost(e: BaseException) -> bool:
  """Whether `e` is JAX's error for a collective or barrier whose peer is
  gone (not a bug: every process must be rerun)."""
  return (isinstance(e, jax.errors.JaxRuntimeError)
          and _LOST.search(str(e)) is not None)


def find_lost_process(text: str, *, process_id: int,
                      num_processes: int) -> LostProcess | None:
  """The lost process that JAX's messages in `text` (an error, a log) name,
  as seen from `process_id`; None when they tell of no lost process.

  The coordination service names a silent process; a collective names only
  an address, which is the other process when there are two.
  """
  if _LOST.search(text) is None:
    return None
  for match in _SILENT_TASK.finditer(text):
    silent = int(match.group(1) or match.group(2))
    if silent != process_id:
      return LostProcess(silent, 'it stopped sending heartbeats')
  if _COORDINATOR_GONE in text and process_id != 0:
    return LostProcess(0, 'the coordinator stopped answering')
  other = 1 - process_id if num_processes == 2 else None
  return LostProcess(other, 'its connection closed')


def num_task_devices() -> int:
  """How many devices the task axis is split over (all, on every host)."""
  return jax.device_count()


def task_mesh(devices=None) -> Mesh:
  """A one-axis mesh named 'tasks' over `devices` (default: all of them)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (TASK_AXIS,))


def task_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (task) axis of every leaf over the mesh."""
  return NamedSharding(mesh, P(TASK_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(tree, mesh: Mesh):
  """Places every leaf, whole, on every device of `mesh` (any host count)."""
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key):
      data = np.asarray(jax.random.key_data(x))
      return jax.random.wrap_key_data(put(data), impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])

  return jax.tree.map(put, tree)
