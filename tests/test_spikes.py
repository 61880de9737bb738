"""Blow-up detection: the spike rules, and what the trainer does on a spike
(``config.on_spike``: 'warn', 'stop', 'rollback')."""

import json
import logging as std_logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import maml_sine
from maml_plugin import actions
from maml_plugin import spikes
from maml_plugin import train
from tests import event_files
from tests.nan_steps import register_spiking_step

SEED = 0
# Targets 1000x from meta-step 151 on: under every key, or only under the
# seed's own keys (a rollback's fresh key trains on healthy tasks).
register_spiking_step('maml_spiking_for_tests', 150)
register_spiking_step('maml_spiking_once_for_tests', 150, only_seed=SEED)


def _lognormal(n, seed=0, sigma=0.5):
  return np.random.default_rng(seed).lognormal(0.0, sigma, n)


def _spikes(losses, first_step=1, **kwargs):
  return spikes.SpikeMonitor(**kwargs).meta_losses(first_step, losses)


def test_a_spike_is_reported_once_at_its_step():
  """Pins the factor's direction (a drop reported as a spike, or the spike
  missed) and the step numbering (off by one)."""
  losses = _lognormal(2000)
  losses[1234] = 1000.0
  found = _spikes(losses, first_step=1)
  assert [s.step for s in found] == [1235]
  assert found[0].value == 1000.0
  assert found[0].history == spikes.SPIKE_WINDOW
  assert found[0].ratio > 500
  assert found[0].describe().startswith(
      'spike at meta-step 1,235: meta-loss 1e+03 is ')
  assert found[0].describe().endswith('the median of the previous 1,000 '
                                      f'steps ({found[0].median:.3g})')
  losses[1234] = 0.0  # A drop is no spike.
  assert not _spikes(losses)


def test_a_burst_is_one_spike_until_the_loss_comes_back():
  losses = _lognormal(1000)
  losses[300:320] = 1000.0
  losses[500:505] = 1000.0
  assert [s.step for s in _spikes(losses, first_step=0)] == [300, 500]


def test_healthy_noise_gives_no_spike_and_nan_is_not_one():
  """Lognormal noise (sigma 0.5) stays far under 10x its median; a NaN or
  Inf is the non-finite guard's business, and stays out of the history."""
  losses = _lognormal(20_000, seed=1)
  losses[5000] = np.nan
  losses[6000] = np.inf
  assert not _spikes(losses)


def test_a_healthy_heavy_tail_is_no_spike_by_default():
  """Pins the default factor above what healthy sinusoid runs reach: single
  meta-batches at 54x the median meta-loss (15 default runs, 70,000
  meta-steps each; docs/fault_tolerance.md). At the old default, 10, such
  runs warned, and `on_spike='rollback'` rolled them back."""
  losses = _lognormal(2000, sigma=0.1)
  losses[[500, 900, 1500]] = 60.0 * np.median(losses)
  assert not _spikes(losses)
  assert [s.step for s in _spikes(losses, first_step=0, factor=10.0)] == [
      500, 900, 1500]


def test_no_check_before_min_history_steps():
  losses = np.ones(300)
  losses[spikes.MIN_HISTORY - 1] = 1000.0  # The 100th value: 99 before it.
  assert not _spikes(losses)
  losses[spikes.MIN_HISTORY] = 1000.0  # 100 before it, then a burst.
  assert [s.step for s in _spikes(losses, first_step=0)] == [100]


def test_the_median_is_over_the_previous_window_only():
  """Pins the window: a median over all history (or another window) sees
  the old level 1.0 and reports 1500 after the burst ended as a spike."""
  losses = np.concatenate([np.ones(400), np.full(100, 1000.0), [1.0],
                           np.full(300, 1500.0)])
  found = _spikes(losses, first_step=0, window=100)
  assert [s.step for s in found] == [400]


def test_the_held_out_rule_compares_with_the_median_of_three():
  monitor = spikes.SpikeMonitor()
  # The median of the last three (1), not of all six (7) nor their max.
  for step, loss in enumerate([10.0, 10.0, 10.0, 1.0, 4.0, 1.0]):
    assert monitor.heldout_loss(step, loss) is None
  assert monitor.last_good_eval_step == 5
  spike = monitor.heldout_loss(6, 2.5)  # 2.5x the median (1) of 3 before.
  assert spike.kind == spikes.HELDOUT_LOSS and spike.median == 1.0
  assert spike.history == spikes.EVAL_HISTORY
  assert monitor.last_good_eval_step == 5
  assert spike.describe().startswith(
      'spike at meta-step 6: held-out loss before adapting 2.5 is 2.5x the '
      'median of the previous 3 evaluations (1)')
  healthy = spikes.SpikeMonitor()
  assert [healthy.heldout_loss(s, v) for s, v in
          enumerate([1.0, 1.5, 1.9, 1.2])] == [None] * 4
  monitor.rewind(3)
  assert monitor.last_good_eval_step == 3


def _config(train_step, **overrides):
  """200 meta-steps in chunks of 10; checkpoints every 50, evaluated every
  50 on 4 tasks."""
  config = maml_sine.get_config('maml,quick')
  config.update(dict(train_step=train_step, seed=SEED, num_train_steps=200,
                     steps_per_call=10, log_every_steps=50,
                     eval_every_steps=50, checkpoint_every_steps=50,
                     meta_batch_size=2, num_eval_tasks=4,
                     eval_num_inner_steps=1, num_plot_tasks=0))
  config.update(overrides)
  return config


# A held-out spike alone: plain SGD steps turn the 1000x targets into a
# blown-up model by the evaluation at 200 (its non-finite updates skipped),
# while the meta-loss rule is off.
HELD_OUT = dict(spike_factor=1e30, meta_optimizer='sgd', meta_lr=0.01,
                on_nonfinite='skip', eval_every_steps=100)


def _checkpoints(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir,
                                                        'checkpoints'))
                if n.isdigit())


def _spike_lines(caplog):
  return [r.getMessage() for r in caplog.records
          if r.getMessage().startswith('spike at')]


def test_a_spike_is_one_line_and_a_scalar_at_its_step(tmp_path, caplog):
  """Pins the report: at the spike's step (not the chunk's end), once."""
  config = _config('maml_spiking_for_tests')
  with caplog.at_level(std_logging.WARNING):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 200
  lines = _spike_lines(caplog)
  assert len(lines) == 1, lines
  assert lines[0].startswith('spike at meta-step 151: meta-loss ')
  assert lines[0].endswith("on_spike='warn': training goes on")
  scalars = event_files.read_scalars(str(tmp_path))
  ratios = {step: float(v[0]) for (tag, step), v in scalars.items()
            if tag == 'spike/meta_loss_ratio'}
  assert list(ratios) == [151] and ratios[151] > 1e5


@pytest.mark.parametrize('overrides, spike_step, kind, kept', [
    (dict(checkpoint_every_steps=10), 151, 'meta-loss', [130, 140, 150]),
    (HELD_OUT, 200, 'held-out loss before adapting', [50, 100, 150]),
], ids=['meta_loss', 'held_out'])
def test_stop_saves_nothing_from_the_spike_on(tmp_path, overrides,
                                              spike_step, kind, kept):
  """Pins: the spike's chunk end (160, a checkpoint step here, when the
  check comes after the chunk's hooks) or the evaluation's own step (when
  the check comes after the checkpoint) is never saved."""
  config = _config('maml_spiking_for_tests', on_spike='stop', **overrides)
  with pytest.raises(spikes.SpikeError) as err:
    train.train_and_evaluate(config, str(tmp_path))
  assert _checkpoints(str(tmp_path)) == kept
  message = str(err.value)
  assert '\n' not in message
  assert message.startswith(f'spike at meta-step {spike_step}: {kind} ')
  assert message.endswith(
      "on_spike='stop': stopped, the last good checkpoint (step 150) in "
      f'{tmp_path}/checkpoints is kept')


@pytest.mark.parametrize('overrides, spike_step, what, restored', [
    ({}, 151, spikes.META_LOSS, 150),
    # The last evaluation before the spike that was not one: step 100, not
    # the newest checkpoint (150).
    (HELD_OUT, 200, spikes.HELDOUT_LOSS, 100),
], ids=['meta_loss', 'held_out'])
def test_rollback_restores_before_the_spike_and_finishes(
    tmp_path, caplog, overrides, spike_step, what, restored):
  """Pins: the checkpoint restored (before the spike), the fresh key after
  it (the same key meets the same spike: three rollbacks, then a stop),
  and the records of the rollback."""
  config = _config('maml_spiking_once_for_tests', on_spike='rollback',
                   **overrides)
  with caplog.at_level(std_logging.WARNING):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 200
  lines = _spike_lines(caplog)
  assert len(lines) == 1, lines
  assert f"restored step {restored} from " in lines[0]
  assert np.all(np.isfinite(jax.tree.leaves(state.params)[0]))
  with open(tmp_path / 'config.json') as f:
    recorded = json.load(f)['rollbacks']
  with open(tmp_path / 'evaluation.json') as f:
    report = json.load(f)
  for rollbacks in (recorded, report['rollbacks']):
    assert [(r['spike_step'], r['what'], r['restored_step'])
            for r in rollbacks] == [(spike_step, what, restored)]
  assert _checkpoints(str(tmp_path))[-1] == 200
  table = actions.format_table(report)
  assert table.endswith(f'rolled back at meta-step {spike_step} ({what} '
                        f'spiked) to step {restored}')


def test_rollback_without_an_earlier_checkpoint_stops_in_one_line(tmp_path):
  config = _config('maml_spiking_for_tests', on_spike='rollback',
                   checkpoint_every_steps=200)
  with pytest.raises(spikes.SpikeError, match=(
      r"^spike at meta-step 151: .*; on_spike='rollback': stopped, no "
      r'checkpoint before it in .* to roll back to$')):
    train.train_and_evaluate(config, str(tmp_path))


def test_detection_changes_nothing_without_a_spike(tmp_path):
  """A healthy run under 'stop' ends bit-identical to one under 'warn'."""
  states = [train.train_and_evaluate(
      _config('maml', on_spike=mode), str(tmp_path / mode))
            for mode in ('warn', 'stop')]
  for a, b in zip(*(jax.tree.leaves((s.params, s.opt_state))
                    for s in states)):
    np.testing.assert_array_equal(a, b)


def test_the_report_says_when_a_few_tasks_dominate_the_mean():
  curves = np.full((10, 2), 0.1)
  curves[0, 1] = 1e6  # One task of ten, after one inner step.
  report = actions.evaluation_report('mse', curves, train_step=7)
  assert report['dominated_by_few_tasks'] == [
      'after 1 inner step the mean (1e+05) is 1e+06x the median (0.1): a few '
      'tasks dominate it']
  assert actions.format_table(report).endswith(
      report['dominated_by_few_tasks'][0])
  curves[0, 1] = 0.5  # 0.14 against 0.1: no line.
  assert 'dominated_by_few_tasks' not in actions.evaluation_report(
      'mse', curves, train_step=7)


def test_warn_prints_at_most_max_warnings_lines(tmp_path, caplog):
  """A run that spikes again and again: the first `MAX_WARNINGS` lines in
  the console, the last one saying so; every spike in TensorBoard."""
  # Targets x1000 from step 151 on, the meta-loss rule re-armed by a tiny
  # window whose median soon follows the new level, then trips again.
  config = _config('maml_spiking_for_tests', spike_factor=1.01,
                   spike_window=2)
  with caplog.at_level(std_logging.WARNING):
    train.train_and_evaluate(config, str(tmp_path))
  lines = _spike_lines(caplog)
  scalars = event_files.read_scalars(str(tmp_path))
  written = [step for (tag, step) in scalars if tag == 'spike/meta_loss_ratio']
  assert len(written) > spikes.MAX_WARNINGS
  assert len(lines) == spikes.MAX_WARNINGS
  assert lines[-1].endswith('later spikes are written to TensorBoard only '
                            '(spike/*_ratio)')
  assert not any('TensorBoard only' in line for line in lines[:-1])


def test_main_stops_on_a_spike_in_one_line_and_a_nonzero_exit(tmp_path):
  """`python -m maml_plugin.main` with on_spike='stop', as a user runs it:
  the spiking step comes from a module of the user's own, imported by the
  user's config file (`config.imports`);
  the run exits 1 with one `maml_plugin:` line naming the step, no
  traceback, and keeps the checkpoint before the spike."""
  (tmp_path / 'user_spiking_step.py').write_text(
      'from tests.nan_steps import register_spiking_step\n'
      "register_spiking_step('maml_spiking_cli', 150)\n")
  (tmp_path / 'user_config.py').write_text(
      'from configs import maml_sine\n\n'
      'def get_config():\n'
      "  config = maml_sine.get_config('maml,quick')\n"
      "  config.imports = ('user_spiking_step',)\n"
      "  config.train_step = 'maml_spiking_cli'\n"
      '  return config\n')
  workdir = tmp_path / 'work'
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ,
             PYTHONPATH=os.pathsep.join([str(tmp_path), repo]))
  flags = dict(on_spike='stop', seed=SEED,
               num_train_steps=200, steps_per_call=10, log_every_steps=50,
               eval_every_steps=50, checkpoint_every_steps=50,
               meta_batch_size=2, num_eval_tasks=4, eval_num_inner_steps=1,
               num_plot_tasks=0)
  proc = subprocess.run(
      [sys.executable, '-m', 'maml_plugin.main',
       f'--config={tmp_path}/user_config.py', f'--workdir={workdir}',
       *[f'--config.{k}={v}' for k, v in flags.items()]],
      cwd=repo, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('maml_plugin: spike at meta-step 151: meta-loss '), last
  assert last.endswith(
      "on_spike='stop': stopped, the last good checkpoint (step 150) in "
      f'{workdir}/checkpoints is kept'), last
  assert _checkpoints(str(workdir)) == [50, 100, 150]
