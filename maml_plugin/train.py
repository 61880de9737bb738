"""Meta-training loop in the Flax-examples shape: `train_and_evaluate`.

Usage::

  from configs import maml_sine
  state = train_and_evaluate(maml_sine.get_config('quick'), '/tmp/maml_sine')

The order is the Flax examples' own but for jit, which comes first: tasks,
model, state (`maml_plugin.components.build_components`), jit
(`compile_training`: a config whose step needs more memory than the device
has stops there, before the workdir is touched), writer, restore, periodic
actions, loop, final evaluation, return the final state. This module holds
the loop only: the train chunk, the loop, the held-out evaluation and its
report, and the signals that stop it. Building the parts is
`maml_plugin.components` (its `create_*` names are importable from here
too), the log filters `maml_plugin.console`, the resumed run's writer
`maml_plugin.new_steps_writer`. All I/O of training lives here and in
`maml_plugin.actions`.

A run can be left alone (`docs/long_runs.md`): it holds ``WORKDIR/lock``
while it runs (a second run on the workdir stops at once), keeps its config
in ``WORKDIR/config.json`` and refuses to resume under one that changes
training, and on SIGTERM or SIGINT saves the step it reached at the next
chunk boundary and raises `Interrupted`.

Speed: `steps_per_call` meta-steps are fused into one jitted `lax.scan`, with
the meta-batches sampled on device inside it; periodic actions fire on call
boundaries, which `config_validation` keeps aligned with their intervals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from typing import Any, Callable

from absl import logging
from clu import periodic_actions
import jax
import jax.numpy as jnp
import ml_collections

from maml_plugin import actions
from maml_plugin import algorithms
from maml_plugin import checkpointing
from maml_plugin import config_validation
from maml_plugin import console
from maml_plugin import distributed
from maml_plugin import guards
from maml_plugin import memory
from maml_plugin import new_steps_writer
from maml_plugin import spikes
from maml_plugin import tensorboard_writer
from maml_plugin import workdir as workdir_lib
# Building the parts lives in `maml_plugin.components`; these names stay
# importable from here (docs/own_loop.md, benchmarks). The loop calls
# `build_components` through this module's global, so a script may
# replace `train.build_components` (benchmarks/sine_stability.py).
from maml_plugin.components import Components
from maml_plugin.components import Problem
from maml_plugin.components import build_components
from maml_plugin.components import create_algorithm
from maml_plugin.components import create_evaluator
from maml_plugin.components import create_optimizer
from maml_plugin.components import create_problem
from maml_plugin.components import create_train_state
from maml_plugin.components import create_train_step
from maml_plugin.components import meta_lr_schedule
# The log filter and the resumed run's writer have their own modules.
from maml_plugin.console import quiet_library_logs
from maml_plugin.new_steps_writer import logged_steps

def make_train_chunk(train_step, tasks, *, meta_batch_size: int,
                     steps_per_call: int, skip_nonfinite: bool = False,
                     batch_sharding=None, step_losses: bool = False):
  """`steps_per_call` meta-steps as one pure function (jit it).

  ``train_chunk(state, rng) -> (state, metrics, nonfinite_report)``: step
  ``s`` uses the key ``fold_in(rng, s)``, split into the meta-batch key and
  the step key, so the tasks depend only on the seed and the step, never on
  the chunking. Non-finite updates are counted (and dropped when
  `skip_nonfinite`), see `maml_plugin.guards`; `batch_sharding` splits the
  meta-batch's task axis over devices (`maml_plugin.distributed`). With
  `step_losses` it returns a fourth value, each step's meta-loss
  (``query_loss_after``; ``[steps_per_call]``) for `maml_plugin.spikes`;
  the steps compute the same either way.
  """
  def train_chunk(state, rng):
    # The metrics' type (regression or classification) from the step itself.
    _, metrics_shape = jax.eval_shape(
        lambda s, r: train_step(s, tasks.train_batch(r, meta_batch_size), r),
        state, rng)
    metrics_cls = type(metrics_shape)

    def body(carry, _):
      state, metrics, report = carry
      step_rng = jax.random.fold_in(rng, state.step)
      batch_rng, step_rng = jax.random.split(step_rng)
      batch = tasks.train_batch(batch_rng, meta_batch_size)
      if batch_sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
      new_state, step_metrics = train_step(state, batch, step_rng)
      new_state, ok, report = guards.guard_update(
          state, new_state, step_metrics, report, skip=skip_nonfinite)
      # The carry keeps the empty metrics' dtypes (float32 sums under x64).
      merged = jax.tree.map(lambda m, o: m.astype(o.dtype),
                            metrics.merge(step_metrics), metrics)
      if skip_nonfinite:  # A skipped step's NaNs must not poison the means.
        merged = jax.tree.map(lambda m, o: jnp.where(ok, m, o), merged,
                              metrics)
      return (new_state, merged, report), guards.meta_loss(step_metrics)

    (state, metrics, report), losses = jax.lax.scan(
        body, (state, metrics_cls.empty(), guards.NonFiniteReport.empty()),
        None, length=steps_per_call)
    if step_losses:
      return state, metrics, report, losses
    return state, metrics, report

  return train_chunk


def _arg_specs(tree, sharding=None):
  """`jax.ShapeDtypeStruct`s of `tree`'s leaves, with `sharding`, or with
  the leaf's own where it is committed to a device (else the default)."""
  def spec(x):
    where = sharding
    if where is None and getattr(x, 'committed', False):
      where = x.sharding
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where,
                                weak_type=getattr(x, 'weak_type', False))
  return jax.tree.map(spec, tree)


def _memory_limit() -> tuple[int | None, str]:
  """What one local device can give a step, and where that number is from:
  the allocator's ``bytes_limit`` (GPU, TPU), else ``MemAvailable`` of
  ``/proc/meminfo`` shared by the host's CPU devices; None if neither."""
  device = jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None  # A backend without statistics.
  if stats and stats.get('bytes_limit'):
    return memory.available_bytes(stats, None), f'that {device} can hold'
  try:
    with open('/proc/meminfo') as f:
      meminfo = f.read()
  except OSError:
    return None, ''  # Not Linux: no check, the fallback still says it.
  sharing = (len(jax.local_devices()) if device.platform == 'cpu' else 1)
  where = 'of host memory available'
  if sharing > 1:
    where = f'of host memory available to each of {sharing} cpu devices'
  return memory.available_bytes(None, meminfo,
                                devices_sharing_host=sharing), where


def check_memory(compiled, cost: memory.Cost, config) -> None:
  """Raises `memory.TooLargeError` when `compiled` (a `jax.stages.Compiled`,
  the program `cost` names) needs more device memory than one device has
  (`memory.refusal`)."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    analysis = None  # A backend that does not say: no check.
  limit, where = _memory_limit()
  message = memory.refusal(cost.what, memory.needed_bytes(analysis), limit,
                           config, cost.fields, cost.savers, where=where)
  if message:
    raise memory.TooLargeError(message)


@contextlib.contextmanager
def out_of_memory(cost: memory.Cost, config, manager=None):
  """XLA's RESOURCE_EXHAUSTED inside as `memory.TooLargeError`: one line
  naming `cost`'s fields (and the checkpoint kept, with `manager`)."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if not memory.is_exhausted(e):
      raise
    message = memory.describe_exhausted(e, cost.what, config, cost.fields,
                                        cost.savers)
    if manager is not None:
      message += f'; {_kept_checkpoint(manager)}'
    raise memory.TooLargeError(message) from None


@dataclasses.dataclass(frozen=True)
class CompiledTraining:
  """What `compile_training` gives the loop.

  Attributes:
    train_chunk: the compiled `make_train_chunk` (``step_losses=True``),
      ``train_chunk(state, rng) -> (state, metrics, report, losses)``; the
      state is donated.
    mesh: the devices' mesh the state is replicated over, or None (one
      device).
  """

  train_chunk: Callable
  mesh: Any = None


def compile_training(config, components: Components, *,
                     num_devices: int) -> CompiledTraining:
  """Compiles the train chunk and the evaluator once, for the shapes and
  shardings the loop will pass, and refuses, before anything runs or is
  written, a config whose train step or evaluation needs more memory than
  a device has (`check_memory`). The loop runs these executables: nothing
  is compiled twice.

  Raises:
    memory.TooLargeError: one line naming the config fields that set the
      size, the estimate and the limit.
  """
  mesh = batch_sharding = state_sharding = None
  if num_devices > 1:  # The task axis is split, the state replicated.
    mesh = distributed.task_mesh()
    batch_sharding = distributed.task_sharding(mesh)
    state_sharding = distributed.replicated(mesh)
  train_chunk = jax.jit(
      make_train_chunk(components.algorithm.train_step,
                       components.problem.tasks,
                       meta_batch_size=config.meta_batch_size,
                       steps_per_call=config.steps_per_call,
                       skip_nonfinite=config.on_nonfinite == 'skip',
                       batch_sharding=batch_sharding, step_losses=True),
      donate_argnums=0)
  state = _arg_specs(components.state, state_sharding)
  rng = _arg_specs(jax.random.key(config.seed), state_sharding)
  compiled = train_chunk.lower(state, rng).compile()
  check_memory(compiled, memory.TRAIN_STEP, config)
  check_memory(components.evaluator.compile(state.params, state.model_state),
               memory.EVALUATION, config)
  return CompiledTraining(train_chunk=compiled, mesh=mesh)


def evaluate_and_report(config, problem: Problem, params, train_step: int,
                        workdir: str, evaluator=None,
                        model_state=None, rollbacks=(), curves=None) -> dict:
  """Held-out evaluation: writes evaluation.json, and adaptation.png when
  the task family draws a picture. `rollbacks`: the run's rollbacks past
  blow-ups (`maml_plugin.spikes`), recorded in the report. `curves`: the
  evaluator's result for `params` when already computed (the periodic
  evaluation of the last step), instead of evaluating again."""
  evaluator = evaluator or create_evaluator(config, problem)
  if curves is None:
    curves = evaluator(params, model_state)
  report = actions.evaluation_report(problem.metric, curves, train_step)
  if rollbacks:
    report['rollbacks'] = list(rollbacks)
  if jax.process_index() > 0:  # Every host computes; the first one writes.
    return report
  actions.write_evaluation_report(workdir, report)
  if problem.picture is not None:  # The task family's own figure.
    problem.picture(
        os.path.join(workdir, 'adaptation.png'),
        predict_fn=lambda p, x: problem.predict_fn(p, x, model_state),
        params=params, tasks=evaluator.tasks,
        inner_loop=evaluator.loop_for(model_state),
        num_inner_steps=config.eval_num_inner_steps)
  return report


class Interrupted(BaseException):
  """SIGTERM or SIGINT stopped the run; `step` is saved (or, during the
  final evaluation, the last step's checkpoint is complete). Like
  `KeyboardInterrupt`, not an `Exception`: no handler of library errors
  (a restore that falls back past an unreadable checkpoint) swallows it."""

  def __init__(self, signum: int, step: int, during: str):
    self.signum, self.step, self.during = signum, step, during
    name = signal.Signals(signum).name
    if during == 'training':
      text = (f'{name} received: saved step {step}; run the same command to '
              'resume')
    elif during == 'save':
      text = (f'{name} received again: stopped without saving step {step}; '
              'the newest complete checkpoint is kept; run the same command '
              'to resume')
    else:
      text = (f'{name} received during the {during}: the checkpoint of step '
              f'{step} is complete; run the same command to finish')
    super().__init__(text)


class _StopSignals:
  """SIGTERM and SIGINT set `received` while training (the loop saves and
  stops at the next chunk boundary); a second one, or one after training
  (`immediate`), raises `Interrupted` at once. The previous handlers come
  back on exit. Installs nothing outside the main thread."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received = None
    self.immediate = False
    self.step = 0
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.received is not None or self.immediate:
      raise Interrupted(signum, self.step,
                        'final evaluation' if self.immediate else 'save')
    self.received = signum
    logging.warning('%s received: saving at the end of this chunk, then '
                    'stopping.', signal.Signals(signum).name)

  def __enter__(self):
    with contextlib.suppress(ValueError):  # Not the main thread.
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def any_received(self) -> bool:
    """Whether any process received one (every process stops together)."""
    if jax.process_count() == 1:
      return self.received is not None
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(
        jnp.asarray(self.received is not None))
    return bool(jnp.any(flags))


class _RollBack(Exception):
  """A spike under ``config.on_spike='rollback'``: the loop restores the
  newest checkpoint before it (`train_and_evaluate`)."""

  def __init__(self, spike: spikes.Spike):
    super().__init__(spike.describe())
    self.spike = spike


def _kept_checkpoint(manager) -> str:
  """What a run that stops keeps: 'the last good checkpoint (step N) in
  DIR is kept'."""
  last = manager.latest_step()
  return (f'the last good checkpoint (step {last}) in {manager.directory} '
          'is kept' if last is not None
          else 'no checkpoint had been written yet')


def _hparams_for_writer(config) -> dict:
  return {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
          for k, v in config.to_dict().items()}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str, *,
                       allow_config_change: bool = False
                       ) -> algorithms.MetaTrainState:
  """Meta-trains on `config`, checkpoints in `workdir`, evaluates at the end.

  Resumes from the newest readable checkpoint in `workdir` if there is one,
  under the config saved there: a field that changes training must keep
  its value unless `allow_config_change` (`workdir_lib.check_resume`).

  Returns:
    The final `MetaTrainState`.

  Raises:
    Interrupted: SIGTERM or SIGINT; the step reached is saved.
    workdir_lib.WorkdirError: `workdir` is a file, another run holds it,
      the config differs from the saved one, or a write failed.
    distributed.PeerLost: another process of a multi-process run is gone.
  """
  workdir_lib.check_directory(workdir)  # Before minutes of building.
  num_devices = distributed.num_task_devices()
  # Validation, tasks, model, algorithm and state first (`build_components`
  # validates for this device count): a bad config or bad data stops the run
  # before the workdir is touched.
  components = build_components(config)
  # Jit: compiled here, before the workdir is touched, so a config too big
  # for the device stops in one line (`compile_training`).
  training = compile_training(config, components, num_devices=num_devices)
  # One run per workdir: the lock comes before anything is written.
  first_process = jax.process_index() == 0
  with (workdir_lib.lock(workdir) if first_process
        else contextlib.nullcontext()):
    with _StopSignals() as signals:
      manager = checkpointing.create_manager(
          workdir, max_to_keep=config.max_checkpoints_to_keep)
      try:
        return _train_and_evaluate(config, workdir, components, training,
                                   signals, manager, num_devices=num_devices,
                                   allow_config_change=allow_config_change)
      except BaseException as e:
        if distributed.is_peer_lost(e):
          # Not closing the manager: its barrier would wait for the lost
          # process until the heartbeat timeout.
          raise distributed.PeerLost(str(e), step=signals.step) from e
        # Stopping on an error: end the manager's background threads before
        # the interpreter does (else one may print a traceback at exit under
        # the one-line error). The error itself is the one to report.
        try:
          manager.close()
        except Exception:  # pylint: disable=broad-except
          pass
        raise


def _restore(config, workdir: str, state, manager, *, num_devices: int,
             allow_config_change: bool):
  """The newest readable checkpoint's state and key (else `state` and the
  seed's key), checked against the config saved in `workdir`, which is
  then rewritten with this run's. Returns ``(state, rng, saved)``, `saved`
  the config read before (None for a new workdir)."""
  first_process = jax.process_index() == 0
  rng = jax.random.key(config.seed)
  latest = manager.latest_step()
  saved = workdir_lib.read_config(workdir)
  changes = []
  if latest is not None and saved is not None:
    changes = workdir_lib.check_resume(
        saved, config, step=latest, num_devices=num_devices,
        training_fields=config_validation.training_fields,
        allow_change=allow_config_change)
  state, rng = checkpointing.restore_latest(
      manager, state, rng, set_aside_unreadable=first_process)
  first_step = int(state.step)
  if first_step:
    if any(c['field'] == 'seed' for c in changes):
      rng = jax.random.key(config.seed)  # The new seed's tasks from here.
    if saved is None:
      logging.warning('%s has checkpoints but no %s (written by an earlier '
                      'version): saving this run\'s config there; later '
                      'resumes are checked against it.', workdir,
                      workdir_lib.CONFIG_NAME)
  if first_process:  # The current run length, cadences, changes.
    workdir_lib.write_config(
        workdir, config, num_devices=num_devices,
        previous=saved if first_step else None, changes=changes)
  return state, rng, saved


def _create_writer(config, workdir: str, first_step: int):
  """The run's CLU writer; a resumed run writes only the steps not
  written before (`new_steps_writer.NewStepsOnlyWriter`)."""
  writer = tensorboard_writer.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  if first_step:
    writer = new_steps_writer.NewStepsOnlyWriter(
        writer, new_steps_writer.logged_steps(workdir))
  writer.write_hparams(_hparams_for_writer(config))
  return writer


class _SpikeResponse:
  """What a blow-up (`maml_plugin.spikes`) does under ``config.on_spike``:
  calling it reports the spike (console and TensorBoard) and, for 'stop',
  raises `spikes.SpikeError`, for 'rollback', `_RollBack`; `roll_back`
  then gives the state to go on from.

  Attributes:
    monitor: the `spikes.SpikeMonitor` of the run.
    rollbacks: the run's rollbacks (those of earlier runs on the workdir
      first), as recorded in ``config.json`` and the report.
  """

  def __init__(self, config, workdir: str, writer, manager, *,
               rollbacks, num_devices: int, mesh):
    self.monitor = spikes.SpikeMonitor(
        factor=config.get('spike_factor', spikes.SPIKE_FACTOR),
        eval_factor=config.get('eval_spike_factor',
                               spikes.EVAL_SPIKE_FACTOR),
        window=config.get('spike_window', spikes.SPIKE_WINDOW))
    self.rollbacks = list(rollbacks)
    self._config, self._workdir = config, workdir
    self._writer, self._manager = writer, manager
    self._num_devices, self._mesh = num_devices, mesh
    self._on_spike = config.get('on_spike', 'warn')
    self._warned = 0  # Spike lines printed by this process ('warn').

  def __call__(self, spike: spikes.Spike) -> None:
    """Reports `spike`; raises `SpikeError` ('stop') or `_RollBack`."""
    self._writer.write_scalars(spike.step, {f'spike/{spike.kind}_ratio':
                                            spike.ratio})
    self._writer.flush()
    on_spike = self._on_spike
    if on_spike == 'warn':
      # A run that spikes all the time (an algorithm whose meta-loss is
      # heavy-tailed) must not bury the console: the first lines, then
      # TensorBoard only.
      self._warned += 1
      if self._warned <= spikes.MAX_WARNINGS:
        last = ('' if self._warned < spikes.MAX_WARNINGS else
                f'; this is the {spikes.MAX_WARNINGS}th spike line of this '
                'run: later spikes are written to TensorBoard only '
                '(spike/*_ratio)')
        logging.warning("%s; on_spike='warn': training goes on%s",
                        spike.describe(), last)
      return
    if on_spike == 'rollback' and len(self.rollbacks) < spikes.MAX_ROLLBACKS:
      raise _RollBack(spike)
    why = ('' if on_spike == 'stop' else
           f' after {len(self.rollbacks)} rollbacks')
    raise spikes.SpikeError(f'{spike.describe()}; on_spike={on_spike!r}: '
                            f'stopped{why}, {_kept_checkpoint(self._manager)}')

  def roll_back(self, spike: spikes.Spike, state, rng):
    """The state and base key of the newest checkpoint before `spike`
    (`state`, `rng`: the templates to restore into), with a fresh key for
    the meta-batches from there (recorded). Returns ``(state, rng, step)``."""
    manager, monitor = self._manager, self.monitor
    first_process = jax.process_index() == 0
    target = (spike.step - 1 if spike.kind == spikes.META_LOSS
              else monitor.last_good_eval_step)
    restored = None if target is None else checkpointing.restore_at_or_before(
        manager, target, state, rng, set_aside_unreadable=first_process)
    if restored is None:
      raise spikes.SpikeError(
          f"{spike.describe()}; on_spike='rollback': stopped, no checkpoint "
          f'before it in {manager.directory} to roll back to')
    restored_state, restored_rng = restored
    restored_step = int(restored_state.step)
    if first_process:  # A resume must not meet the steps after it.
      checkpointing.set_aside_after(manager, restored_step)
    record = {'spike_step': spike.step, 'what': spike.kind,
              'value': spike.value, 'median': spike.median,
              'restored_step': restored_step}
    self.rollbacks.append(record)
    if first_process:
      workdir_lib.write_config(
          self._workdir, self._config, num_devices=self._num_devices,
          previous=workdir_lib.read_config(self._workdir),
          rollbacks=[record])
    monitor.rewind(restored_step)
    logging.warning(
        "%s; on_spike='rollback': restored step %s from %s (rollback %d of "
        '%d); training goes on with fresh meta-batches', spike.describe(),
        f'{restored_step:,}', manager.directory, len(self.rollbacks),
        spikes.MAX_ROLLBACKS)
    # Fresh meta-batches from there, kept in later checkpoints (resuming
    # stays exact).
    restored_rng = jax.random.fold_in(restored_rng, len(self.rollbacks))
    if self._mesh is not None:
      restored_state, restored_rng = distributed.replicate(
          (restored_state, restored_rng), self._mesh)
    return restored_state, restored_rng, restored_step


@dataclasses.dataclass
class _Hooks:
  """The loop's periodic actions, in the order they run at a step, and the
  two the loop reads apart."""
  report_progress: periodic_actions.ReportProgress
  few_shot_evaluation: Any
  in_order: list


def _create_hooks(config, components: Components, writer, workdir: str,
                  manager, response: _SpikeResponse, *, state_fn, rng_fn,
                  at_step: int) -> _Hooks:
  """The loop's hooks, their clocks started at `at_step` (the start, or
  the step a rollback restored)."""
  # Only on log steps (chunk boundaries): the hooks see the steps of a
  # chunk in one burst, so a time-triggered report mid-chunk would divide
  # a burst of steps by microseconds and log a meaningless steps_per_sec.
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writer,
      every_steps=config.log_every_steps, every_secs=None)
  few_shot_evaluation, checkpoint = components.periodic_actions(
      writer, workdir, state_fn=state_fn, rng=rng_fn, manager=manager)
  progress_line = console.ProgressLine(
      num_train_steps=config.num_train_steps,
      every_steps=config.eval_every_steps,
      evaluation_action=few_shot_evaluation)
  hooks = [
      report_progress,
      few_shot_evaluation,
      # Before the checkpoint: a spike's step is never saved.
      actions.HeldOutSpikeCheck(evaluation=few_shot_evaluation,
                                monitor=response.monitor, on_spike=response,
                                every_steps=config.eval_every_steps,
                                on_steps=[config.num_train_steps]),
      checkpoint,
      # After the evaluation, whose result it shows.
      progress_line,
  ]
  # The rates' clocks start now, before the first chunk: a first rate
  # measured from the first step's hook call would divide by microseconds.
  for hook in (report_progress, progress_line):
    hook(at_step)
  return _Hooks(report_progress, few_shot_evaluation, hooks)


def _train_and_evaluate(config, workdir: str, components: Components,
                        training: CompiledTraining, signals: _StopSignals,
                        manager, *, num_devices: int,
                        allow_config_change: bool):
  """`train_and_evaluate` in the locked workdir; closes `manager` when it
  returns."""
  # Restore, under the config the checkpoints were trained with.
  state, rng, saved = _restore(config, workdir, components.state, manager,
                               num_devices=num_devices,
                               allow_config_change=allow_config_change)
  first_step = int(state.step)
  if first_step >= config.num_train_steps:
    # Before the writer: a finished run gains no event file.
    return _already_complete(config, components.problem, state, workdir,
                             manager=manager)
  writer = _create_writer(config, workdir, first_step)

  # Devices: the task axis is split over all of them, the state replicated.
  mesh = training.mesh
  if mesh is not None:
    state, rng = distributed.replicate((state, rng), mesh)

  # Jit: compiled already (`compile_training`); an allocation that fails
  # anyway is one line too.
  def train_chunk(state, rng):
    with out_of_memory(memory.TRAIN_STEP, config, manager):
      state, metrics, report, losses = training.train_chunk(state, rng)
      # Reading the report waits for the chunk: the run stops at the first
      # bad chunk, and sharded CPU steps are never queued deep enough to
      # time out in a collective's rendezvous.
      return state, metrics, jax.device_get(report), losses

  # Blow-ups (`maml_plugin.spikes`) and the periodic actions.
  response = _SpikeResponse(
      config, workdir, writer, manager, num_devices=num_devices, mesh=mesh,
      rollbacks=(saved or {}).get('rollbacks', []) if first_step else [])

  def create_hooks(at_step):
    return _create_hooks(config, components, writer, workdir, manager,
                         response, state_fn=lambda: state, rng_fn=lambda: rng,
                         at_step=at_step)

  hooks = create_hooks(first_step)
  every_secs = config.get('checkpoint_every_secs')

  # Loop.
  logging.info('Meta-training from step %s to %s (%s).', f'{first_step:,}',
               f'{config.num_train_steps:,}',
               'resumed from its checkpoint' if first_step else 'a new run')
  step = first_step
  signals.step = step
  saved_at = time.monotonic()
  train_metrics = None
  skipped = 0
  while step < config.num_train_steps:
    state, chunk_metrics, report, losses = train_chunk(state, rng)
    if int(report.first_bad_step) >= 0 and config.on_nonfinite == 'stop':
      raise guards.NonFiniteError(f'{guards.describe(report)}; stopped, '
                                  f'{_kept_checkpoint(manager)}')
    try:
      for spike in response.monitor.meta_losses(step + 1,
                                                jax.device_get(losses)):
        response(spike)
      skipped += report.skipped
      train_metrics = (chunk_metrics if train_metrics is None
                       else train_metrics.merge(chunk_metrics))
      previous, step = step, step + config.steps_per_call
      if step % config.log_every_steps == 0:
        scalars = {f'train/{k}': v
                   for k, v in train_metrics.compute().items()}
        if config.on_nonfinite == 'skip':
          scalars['train/skipped_updates'] = skipped
        writer.write_scalars(step, scalars)
        train_metrics, skipped = None, 0
      with out_of_memory(memory.EVALUATION, config, manager):
        for s in range(previous + 1, step + 1):
          for hook in hooks.in_order:
            hook(s)
    except _RollBack as e:
      state, rng, step = response.roll_back(e.spike, state, rng)
      hooks = create_hooks(step)
      train_metrics, skipped = None, 0
      signals.step = step
      saved_at = time.monotonic()
      continue
    stopping = signals.any_received()
    if manager.latest_step() == step:
      saved_at = time.monotonic()
    elif stopping or (every_secs is not None
                      and time.monotonic() - saved_at >= every_secs):
      checkpointing.save(manager, state, rng)
      saved_at = time.monotonic()
    signals.step = step
    if stopping:
      writer.flush()
      manager.close()
      raise Interrupted(signals.received or signal.SIGTERM, step, 'training')

  # Final evaluation on the held-out tasks; a signal now stops at once.
  signals.immediate = True
  if signals.received is not None:  # Came while resuming a finished run.
    raise Interrupted(signals.received, step, 'final evaluation')
  # The periodic evaluation of the last step (in TensorBoard) is the final
  # one: same evaluator, same params.
  evaluation = hooks.few_shot_evaluation
  done = evaluation.last_step == step
  with hooks.report_progress.timed('final_eval'), out_of_memory(
      memory.EVALUATION, config, manager):
    report = evaluate_and_report(
        config, components.problem, state.params, int(state.step), workdir,
        evaluator=components.evaluator, model_state=state.model_state,
        rollbacks=response.rollbacks,
        curves=evaluation.last_curves if done else None)
  logging.info('Evaluation:\n%s', actions.format_table(report))
  manager.close()
  return state


def _already_complete(config, problem: Problem, state, workdir: str, *,
                      manager) -> algorithms.MetaTrainState:
  """A run whose checkpoint is at `num_train_steps`: one line, then the
  final evaluation once (the config's evaluation fields may have changed)."""
  step = int(state.step)
  logging.info('Already complete: the checkpoint in %s is at step %s of %s; '
               'evaluating it.', workdir, f'{step:,}',
               f'{config.num_train_steps:,}')
  rollbacks = (workdir_lib.read_config(workdir) or {}).get('rollbacks', ())
  report = evaluate_and_report(config, problem, state.params, step, workdir,
                               model_state=state.model_state,
                               rollbacks=rollbacks)
  logging.info('Evaluation:\n%s', actions.format_table(report))
  manager.close()
  return state
