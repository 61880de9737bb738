"""A config too big for the device is refused before training, in one line
naming the fields that set the size (`maml_plugin.memory`,
`train.compile_training`).

Pins the 42-line ``RESOURCE_EXHAUSTED: Out of memory allocating
1089320009592 bytes`` traceback that ``--config.meta_batch_size=10000000``
printed after writing the workdir, and the estimate's arithmetic against
the train state's sizes computed by hand.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import maml_sine
from maml_plugin import memory
from maml_plugin import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  config = maml_sine.get_config('maml,quick')
  for name, value in overrides.items():
    config[name] = value
  return config


@pytest.fixture(scope='module')
def quick():
  """The quick MAML config, its components and its compiled training."""
  config = _config()
  components = train.build_components(config)
  return config, components, train.compile_training(config, components,
                                                    num_devices=1)


def test_needed_bytes_adds_arguments_outputs_temporaries_less_aliases():
  """x + y on two float32[1000]: 8,000 bytes in, 4,000 out, no temporaries;
  donating x lets the output reuse it."""
  spec = jax.ShapeDtypeStruct((1000,), jnp.float32)
  plain = jax.jit(lambda x, y: x + y).lower(spec, spec).compile()
  donated = jax.jit(lambda x, y: x + y, donate_argnums=0).lower(
      spec, spec).compile()
  assert memory.needed_bytes(plain.memory_analysis()) == 8000 + 4000
  assert memory.needed_bytes(donated.memory_analysis()) == 8000
  assert memory.needed_bytes(None) is None


def test_train_step_estimate_counts_the_state_computed_by_hand(quick):
  """The 1-40-40-1 MLP has P = (1+1)*40 + (40+1)*40 + (40+1)*1 = 1,761
  float32 params; the train state is step, params, Adam's mu, nu and count
  and the schedule's count: 12 P + 12 bytes, donated (aliased), plus the
  8-byte key. What the step needs besides is XLA's temporaries."""
  config, _, training = quick
  assert config.hidden_sizes == (40, 40)
  p = (1 + 1) * 40 + (40 + 1) * 40 + (40 + 1) * 1
  state_bytes = 12 * p + 3 * 4
  analysis = training.train_chunk.memory_analysis()
  assert analysis.argument_size_in_bytes == state_bytes + 8
  assert analysis.alias_size_in_bytes == state_bytes
  assert memory.needed_bytes(analysis) == (
      state_bytes + 8 + analysis.output_size_in_bytes
      + analysis.temp_size_in_bytes - state_bytes)


def test_refusal_names_the_estimate_the_limit_and_the_fields():
  config = _config(meta_batch_size=10_000_000)
  message = memory.refusal('the train step', 1_089_320_009_592,
                           20_100_000_000, config, memory.TRAIN_FIELDS,
                           memory.TRAIN_SAVERS)
  assert message == (
      'the train step needs 1.1 TB, more than the 20.1 GB available: lower '
      'config.meta_batch_size=10000000, config.num_support/num_query=10/10, '
      'config.hidden_sizes=(40, 40) or config.num_inner_steps=1, or set '
      'config.task_batch_size to a divisor of config.meta_batch_size or '
      'config.remat_inner_steps to True')


def test_refusal_only_past_the_limit_and_only_when_both_are_known():
  config = _config()
  def refuse(needed, limit):
    return memory.refusal('the train step', needed, limit, config,
                          memory.TRAIN_FIELDS)
  assert refuse(100, 100) is None
  assert refuse(99, 100) is None
  assert refuse(101, 100).startswith('the train step needs 101 B, more than '
                                     'the 100 B available: lower ')
  assert refuse(None, 100) is None and refuse(101, None) is None


def test_fields_are_those_the_config_has():
  """Omniglot's config names its ways and filters, not hidden sizes."""
  from configs import maml_omniglot  # pylint: disable=g-import-not-at-top
  text = memory.advice(maml_omniglot.get_config(), memory.EVAL_FIELDS,
                       memory.EVAL_SAVERS)
  assert 'config.num_eval_tasks=' in text and 'config.ways=' in text
  assert 'config.num_filters=' in text and 'hidden_sizes' not in text
  assert 'eval_task_batch_size' not in text  # Set already (1).


def test_available_bytes_is_the_allocator_limit_else_shared_host_memory():
  meminfo = 'MemTotal: 32000000 kB\nMemAvailable:   20000000 kB\n'
  assert memory.parse_meminfo(meminfo) == 20_000_000 * 1024
  assert memory.available_bytes({'bytes_limit': 80e9, 'bytes_in_use': 1},
                                meminfo) == 80e9
  assert memory.available_bytes(None, meminfo, devices_sharing_host=4) == (
      20_000_000 * 1024 // 4)
  assert memory.available_bytes({}, 'MemTotal: 1 kB\n') is None
  assert memory.available_bytes(None, None) is None


def test_quick_config_is_not_refused_and_a_smaller_device_would_be(
    quick, monkeypatch):
  """The real limit passes the quick config; a device of one byte less than
  the train step needs refuses it, of exactly that much does not."""
  config, components, training = quick
  needed = memory.needed_bytes(training.train_chunk.memory_analysis())
  limit, _ = train._memory_limit()  # pylint: disable=protected-access
  assert limit is None or needed < limit
  check = lambda: train.check_memory(  # pylint: disable=g-long-lambda
      training.train_chunk, memory.TRAIN_STEP, config)
  monkeypatch.setattr(train, '_memory_limit', lambda: (needed, 'here'))
  check()
  monkeypatch.setattr(train, '_memory_limit', lambda: (needed - 1, 'here'))
  with pytest.raises(memory.TooLargeError,
                     match=r'^the train step needs .* more than the .* here: '
                           r'lower config\.meta_batch_size=25, '):
    check()
  del components


def test_evaluation_is_checked_before_training_naming_its_fields(
    monkeypatch):
  """A device too small for the evaluation but not for the train step
  refuses the evaluation, naming num_eval_tasks (not meta_batch_size)."""
  config = _config(num_eval_tasks=2000)
  components = train.build_components(config)
  spec = train._arg_specs(components.state)  # pylint: disable=protected-access
  evaluation = memory.needed_bytes(components.evaluator.compile(
      spec.params, spec.model_state).memory_analysis())
  monkeypatch.setattr(train, '_memory_limit',
                      lambda: (evaluation - 1, 'here'))
  with pytest.raises(memory.TooLargeError) as e:
    train.compile_training(config, components, num_devices=1)
  assert str(e.value).startswith('the few-shot evaluation needs ')
  assert 'lower config.num_eval_tasks=2000, config.eval_num_query=' in str(
      e.value)
  assert 'meta_batch_size' not in str(e.value)


def test_out_of_memory_met_anyway_is_one_line():
  """XLA's RESOURCE_EXHAUSTED (a real one: 1 TiB on the host) becomes
  `TooLargeError` naming the fields; other errors pass through."""
  config = _config()
  with pytest.raises(memory.TooLargeError) as e:
    with train.out_of_memory(memory.TRAIN_STEP, config):
      jax.block_until_ready(jnp.ones(2**40, jnp.uint8))
  assert str(e.value).startswith(
      'the train step ran out of device memory (allocating 1.1 TB): lower '
      'config.meta_batch_size=25, ')
  with pytest.raises(ValueError):
    with train.out_of_memory(memory.TRAIN_STEP, config):
      raise ValueError('not memory')


def test_huge_meta_batch_is_refused_in_one_line_writing_nothing(tmp_path):
  """The command: one line on stderr naming meta_batch_size, exit 1, and
  the workdir never created (the check comes before the lock)."""
  workdir = tmp_path / 'work'
  proc = subprocess.run(
      [sys.executable, '-m', 'maml_plugin.main',
       '--config=configs/maml_sine.py:maml,quick', f'--workdir={workdir}',
       '--config.meta_batch_size=10000000'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith('maml_plugin: the train step needs '), lines
  assert 'more than the ' in lines[0]
  assert ': lower config.meta_batch_size=10000000, ' in lines[0]
  assert 'Meta-training' not in proc.stdout
  assert not workdir.exists()


def test_evaluator_runs_the_executable_the_check_compiled(quick):
  """Nothing is compiled twice: the evaluator's calls run the executable
  `compile_training` measured (jit's own cache stays empty)."""
  _, components, _ = quick
  evaluator = components.evaluator
  curves = evaluator(components.state.params, components.state.model_state)
  assert curves.shape == (evaluator.num_tasks, evaluator.num_inner_steps + 1)
  assert evaluator._curves._cache_size() == 0  # pylint: disable=protected-access
