"""What a compiled step needs against what the device has, in one line.

Usage (the trainer, once it has compiled the step it will run)::

  compiled = jax.jit(train_chunk).lower(state, rng).compile()
  needed = memory.needed_bytes(compiled.memory_analysis())
  limit = memory.available_bytes(device.memory_stats(), meminfo_text)
  message = memory.refusal(memory.TRAIN_STEP.what, needed, limit, config,
                           memory.TRAIN_FIELDS, memory.TRAIN_SAVERS)
  if message:
    raise memory.TooLargeError(message)

Pure: the caller reads the device's statistics and ``/proc/meminfo``
(`maml_plugin.train`); here they are only compared and described. The
estimate is XLA's own for the executable that runs (arguments, outputs
and temporaries, less the outputs that reuse donated arguments), so it is
exact for what XLA allocates and knows nothing of other processes.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple, Sequence

# The config fields that set a step's size, in the order a user would lower
# them; only those the config at hand has are named. A pair is named
# together ('config.num_support/num_query=10/10').
TRAIN_FIELDS = ('meta_batch_size', ('num_support', 'num_query'), 'ways',
                'hidden_sizes', 'num_filters', 'num_inner_steps')
EVAL_FIELDS = ('num_eval_tasks', 'eval_num_query', 'num_support', 'ways',
               'hidden_sizes', 'num_filters', 'eval_num_inner_steps')
# Fields that bound memory without changing the result, with what to set.
TRAIN_SAVERS = (('task_batch_size', 'a divisor of config.meta_batch_size'),
                ('remat_inner_steps', 'True'))
EVAL_SAVERS = (('eval_task_batch_size', 'a small int, e.g. 1'),)


class Cost(NamedTuple):
  """A compiled program as its messages name it: what it is, the config
  fields that set its size and those that bound its memory (`advice`)."""

  what: str
  fields: Sequence
  savers: Sequence = ()


TRAIN_STEP = Cost('the train step', TRAIN_FIELDS, TRAIN_SAVERS)
EVALUATION = Cost('the few-shot evaluation', EVAL_FIELDS, EVAL_SAVERS)


class TooLargeError(Exception):
  """A step needs more memory than its device has; the message names the
  config fields that set its size."""


def needed_bytes(analysis) -> int | None:
  """Device bytes of one run of a compiled executable, from
  ``compiled.memory_analysis()``: arguments + outputs + temporaries, less
  the outputs aliased to (donated) arguments. None when XLA gives none."""
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def parse_meminfo(text: str) -> int | None:
  """``MemAvailable`` of a ``/proc/meminfo`` text, in bytes (None if
  absent)."""
  match = re.search(r'^MemAvailable:\s+(\d+)\s*kB', text, re.MULTILINE)
  return int(match.group(1)) * 1024 if match else None


def available_bytes(memory_stats: Mapping[str, Any] | None,
                    meminfo_text: str | None, *,
                    devices_sharing_host: int = 1) -> int | None:
  """What one device can give a step: its allocator's ``bytes_limit``
  (GPU, TPU), else the host's available memory shared by the devices that
  live in it (CPU). None when neither is known: no check."""
  if memory_stats and memory_stats.get('bytes_limit'):
    return int(memory_stats['bytes_limit'])
  available = parse_meminfo(meminfo_text) if meminfo_text else None
  if available is None:
    return None
  return available // max(1, devices_sharing_host)


def format_bytes(n: float) -> str:
  """``'1.1 TB'``, ``'20.1 GB'``, ``'512 B'``: powers of 1000 (`df -H`)."""
  for unit in ('B', 'kB', 'MB', 'GB', 'TB'):
    if abs(n) < 1000 or unit == 'TB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1000
  raise AssertionError('unreachable')


def _named(config, names: Sequence) -> list[str]:
  """``config.meta_batch_size=25``, ... for the fields `config` has."""
  out = []
  for entry in names:
    group = entry if isinstance(entry, tuple) else (entry,)
    present = [n for n in group if n in config]
    if not present:
      continue
    values = '/'.join(str(config[n]) for n in present)
    out.append(f'config.{"/".join(present)}={values}')
  return out


def advice(config, fields: Sequence, savers: Sequence = ()) -> str:
  """What to change: ``lower config.meta_batch_size=10000000, ... or
  config.num_inner_steps=1, or set config.task_batch_size to ...``."""
  named = _named(config, fields)
  text = ''
  if named:
    text = 'lower ' + (named[0] if len(named) == 1 else
                       f'{", ".join(named[:-1])} or {named[-1]}')
  sets = [f'config.{name} to {value}' for name, value in savers
          if name in config and config[name] in (None, False)]
  if sets:
    text += (', or ' if text else '') + 'set ' + ' or '.join(sets)
  return text


def refusal(what: str, needed: int | None, limit: int | None, config,
            fields: Sequence, savers: Sequence = (),
            where: str = 'available') -> str | None:
  """One line when `needed` exceeds `limit` (both bytes), else None:
  ``the train step needs 1.1 TB, more than the 20.1 GB available: lower
  config.meta_batch_size=10000000, ...``. Nothing is refused when
  either is unknown."""
  if needed is None or limit is None or needed <= limit:
    return None
  return (f'{what} needs {format_bytes(needed)}, more than the '
          f'{format_bytes(limit)} {where}: '
          f'{advice(config, fields, savers)}')


def is_exhausted(error: BaseException) -> bool:
  """Whether `error` is XLA's RESOURCE_EXHAUSTED (an allocation failed)."""
  return (type(error).__name__ in ('JaxRuntimeError', 'XlaRuntimeError')
          and 'RESOURCE_EXHAUSTED' in str(error))


def describe_exhausted(error: BaseException, what: str, config,
                       fields: Sequence, savers: Sequence = ()) -> str:
  """One line for a RESOURCE_EXHAUSTED met while running `what`:
  ``the train step ran out of memory (allocating 1.1 TB): lower ...``."""
  match = re.search(r'allocating (\d+) bytes', str(error))
  size = (f' (allocating {format_bytes(int(match.group(1)))})' if match
          else '')
  return (f'{what} ran out of device memory{size}: '
          f'{advice(config, fields, savers)}')
