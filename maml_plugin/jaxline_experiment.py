"""A jaxline experiment that meta-trains with any registered train step.

Needs jaxline (``pip install -e '.[jaxline]'``). jaxline 0.0.8 calls
two names JAX 0.10 removed; `maml_plugin.jaxline_compat` defines them (only
where missing) before jaxline is imported here.

Usage, with jaxline's own entry point (the config is jaxline's; ours sits
at ``config.experiment_kwargs.config``)::

  from configs import maml_sine
  from jaxline import platform
  from maml_plugin import jaxline_experiment

  def get_config():                         # in your jaxline config file
    return jaxline_experiment.get_config(maml_sine.get_config('quick'),
                                         checkpoint_dir='/tmp/maml_jaxline')

  app.run(functools.partial(platform.main, jaxline_experiment.MetaExperiment))

or from Python, ``jaxline.train.train(MetaExperiment, config, checkpointer,
writer)``. `configs/jaxline_sine.py` is such a config file::

  python -m maml_plugin.jaxline_experiment --config=configs/jaxline_sine.py:quick

What jaxline hands the experiment, and what it does with it:

* ``step(global_step=..., rng=..., writer=...)``: `rng` is one raw
  ``uint32[2]`` key per local device (``[devices, 2]``). Device ``d``'s key
  is split into a task key, from which that device's share of the
  meta-batch (``meta_batch_size / devices`` tasks) is drawn, and a step
  key; the meta-batch is the devices' shares in device order, its task
  axis sharded over the devices (`maml_plugin.distributed`), and the
  registered ``train_step(state, batch, rng)`` gets device 0's step key.
  `global_step` (one copy per device) is not needed: the state counts
  its own steps.
* ``step`` returns its scalars (``train/query_loss_after``, ...) and writes
  nothing: jaxline writes them, each once.
* The train state is one array tree replicated over the devices (not one
  copy per device along a leading axis, jaxline's pmap convention), so it
  is listed in ``NON_BROADCAST_CHECKPOINT_ATTRS``. jaxline's snapshot keeps
  references to its arrays, so the jitted step does not donate them: a
  snapshot taken mid-run stays valid while training goes on.
* A NaN or Inf meta-loss or meta-gradient is met as ``config.on_nonfinite``
  says, as in our trainer (`maml_plugin.guards`): ``'stop'`` (the
  default) raises `guards.NonFiniteError` naming the meta-step, which ends
  jaxline's loop, the experiment's state the last good one; ``'skip'``
  drops the update and returns ``train/skipped_updates``.
* ``evaluate`` returns the few-shot evaluation scalars
  (``eval/mse_step0``, ...) of `maml_plugin.evaluation.FewShotEvaluator`
  on the config's held-out tasks, with the algorithm's own inner loop.

The model is initialised from ``config.seed``, as by our trainer, not from
jaxline's ``init_rng``, so both start from the same parameters. One process
only; jaxline's ``config.training_steps`` must equal our
``num_train_steps`` (learning-rate schedules end there; `get_config` links
the two).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from maml_plugin import actions
from maml_plugin import components
from maml_plugin import config_validation
from maml_plugin import distributed
from maml_plugin import guards
from maml_plugin import jaxline_compat

jaxline_compat.apply()

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxline import base_config
from jaxline import experiment
# pylint: enable=g-import-not-at-top,wrong-import-position


def get_config(config: ml_collections.ConfigDict, *,
               checkpoint_dir: str | None = None
               ) -> ml_collections.ConfigDict:
  """jaxline's base config around our `config`, its intervals from ours.

  ``training_steps`` is a reference to ``config.num_train_steps`` (setting
  either sets both); logging and checkpointing count steps
  (``interval_type='steps'``), every ``config.log_every_steps`` and
  ``config.checkpoint_every_steps``; the seed of jaxline's step keys is
  ``config.seed``. `checkpoint_dir` is where jaxline's platform writes its
  TensorBoard logs. The returned config holds a copy of `config` with
  ``steps_per_call=1``: jaxline calls `step` once per meta-step.
  """
  config = config.copy_and_resolve_references()
  config.steps_per_call = 1
  jl = base_config.get_base_config()
  jl.experiment_kwargs = ml_collections.ConfigDict({'config': config})
  jl.training_steps = jl.experiment_kwargs.config.get_ref('num_train_steps')
  jl.random_seed = config.seed
  jl.interval_type = 'steps'
  jl.log_train_data_interval = config.log_every_steps
  jl.log_tensors_interval = config.log_every_steps
  jl.save_checkpoint_interval = config.checkpoint_every_steps
  jl.max_checkpoints_to_keep = config.max_checkpoints_to_keep
  jl.checkpoint_dir = checkpoint_dir
  return jl


class MetaExperiment(experiment.AbstractExperiment):
  """Meta-training of ``config.train_step`` on ``config.task`` (module doc)."""

  NON_BROADCAST_CHECKPOINT_ATTRS = {'_state': 'state'}

  def __init__(self, mode: str, init_rng: jax.Array | None = None, *,
               config: ml_collections.ConfigDict):
    super().__init__(mode=mode, init_rng=init_rng)
    del init_rng  # The model is initialised from config.seed (module doc).
    if jax.process_count() > 1:
      raise ValueError('MetaExperiment runs in one process; got '
                       f'{jax.process_count()}')
    self._num_devices = jax.local_device_count()
    config_validation.validate(config, num_devices=self._num_devices)
    self._config = config
    self._problem = components.create_problem(config)
    tx = components.create_optimizer(config)
    self._algorithm = components.create_algorithm(config, self._problem, tx)
    self._mesh = None
    if self._num_devices > 1:
      self._mesh = distributed.task_mesh(jax.local_devices())
    self._state = self._place(
        components.create_train_state(self._problem, self._algorithm, tx,
                                      config))
    self._evaluator = None  # Built on first use: only evaluation needs it.
    # No donation: jaxline's snapshots hold the state's arrays.
    self._train = jax.jit(self._train_fn)

  @property
  def state(self):
    """The current train state (a `maml_plugin.MetaTrainState`)."""
    return self._state

  def _place(self, state):
    """The state replicated over the task mesh (as is on one device)."""
    return state if self._mesh is None else distributed.replicate(
        state, self._mesh)

  def _train_fn(self, state, key_data):
    keys = jax.random.wrap_key_data(key_data)             # [devices]
    task_keys, step_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
    per_device = self._config.meta_batch_size // self._num_devices
    shares = jax.vmap(
        lambda k: self._problem.tasks.train_batch(k, per_device))(task_keys)
    batch = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), shares)
    if self._mesh is not None:
      batch = jax.lax.with_sharding_constraint(
          batch, distributed.task_sharding(self._mesh))
    new_state, metrics = self._algorithm.train_step(state, batch,
                                                    step_keys[0])
    # `config.on_nonfinite`, as our trainer's loop: 'skip' drops a bad
    # update here, 'stop' raises in `step` (`maml_plugin.guards`).
    new_state, _, report = guards.guard_update(
        state, new_state, metrics, guards.NonFiniteReport.empty(),
        skip=self._config.on_nonfinite == 'skip')
    return new_state, metrics, report

  def _device_keys(self, rng) -> np.ndarray:
    """jaxline's per-device keys as ``uint32[devices, 2]`` host data."""
    rng = jax.device_get(rng)
    if jax.dtypes.issubdtype(getattr(rng, 'dtype', None),
                             jax.dtypes.prng_key):
      rng = jax.random.key_data(rng)
    keys = np.asarray(rng, np.uint32)
    if keys.ndim == 1:  # One key, from a caller other than jaxline.
      keys = keys[None]
    if keys.ndim != 2 or keys.shape[0] != self._num_devices:
      raise ValueError(
          f'rng has shape {np.shape(rng)}: must be one key per local '
          f'device, [{self._num_devices}, 2] (as jaxline hands it)')
    if len({k.tobytes() for k in keys}) < len(keys):
      raise ValueError(
          'rng: the per-device keys are equal, so every device would draw '
          'the same tasks; use a random_mode_train that is unique per '
          "device (jaxline's default, 'unique_host_unique_device')")
    return keys

  def step(self, *, global_step, rng, writer) -> dict[str, float]:
    """One meta-step; returns its scalars for jaxline to write.

    A NaN or Inf meta-loss or meta-gradient is handled as
    ``config.on_nonfinite`` says, as in our trainer: 'stop' raises
    `guards.NonFiniteError` naming the meta-step, the state kept at the
    last good one; 'skip' keeps the state's values (its step advances),
    returns ``train/skipped_updates`` (1 or 0) and leaves out the bad
    step's other scalars.
    """
    del global_step, writer  # The state counts steps; jaxline writes.
    state, metrics, report = self._train(self._state,
                                         self._device_keys(rng))
    # Reading the values waits for the step: sharded CPU steps are never
    # queued deep enough to time out in a collective's rendezvous.
    report = jax.device_get(report)
    bad = int(report.first_bad_step) >= 0
    if bad and self._config.on_nonfinite == 'stop':
      raise guards.NonFiniteError(
          f'{guards.describe(report)}; stopped before applying it: the '
          "experiment's state is the last good one")
    self._state = state
    scalars = {} if bad else {
        f'train/{k}': float(v)
        for k, v in jax.device_get(metrics.compute()).items()}
    if self._config.on_nonfinite == 'skip':
      scalars['train/skipped_updates'] = float(bad)
    return scalars

  def evaluate(self, *, global_step, rng, writer) -> dict[str, float]:
    """Few-shot evaluation of the current state; jaxline writes the result."""
    del global_step, rng, writer  # The held-out tasks are fixed by config.
    if self._evaluator is None:
      self._evaluator = components.create_evaluator(
          self._config, self._problem, algorithm=self._algorithm)
    # Reads the state (batch-norm averages included), never changes it.
    curves = self._evaluator(self._state.params, self._state.model_state)
    return actions.evaluation_scalars(self._problem.metric, curves)

  def restore_from_snapshot(self, snapshot_state) -> None:
    """jaxline's restore, then the state put back on every device."""
    super().restore_from_snapshot(snapshot_state)
    self._state = self._place(self._state)

  def should_run_step(self, global_step: int,
                      config: ml_collections.ConfigDict) -> bool:
    if config.training_steps != self._config.num_train_steps:
      raise ValueError(
          f'config.training_steps={config.training_steps}: must equal '
          'config.experiment_kwargs.config.num_train_steps='
          f'{self._config.num_train_steps} (schedules end there)')
    return super().should_run_step(global_step, config)


def main(argv: Any) -> None:
  """jaxline's ``platform.main`` over `MetaExperiment` (``--config=...``)."""
  from jaxline import platform  # pylint: disable=g-import-not-at-top
  try:
    platform.main(MetaExperiment, argv)
  except guards.NonFiniteError as e:  # jaxline has logged its traceback.
    raise SystemExit(f'maml_plugin: {e}') from None


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  # jaxline's platform defines --config.
  from jaxline import platform as _  # pylint: disable=g-import-not-at-top,unused-import
  flags.mark_flag_as_required('config')
  from maml_plugin import config_files  # pylint: disable=g-import-not-at-top
  # A --config path that does not exist: the shipped config of that name.
  app.run(main, flags_parser=config_files.flags_parser)
