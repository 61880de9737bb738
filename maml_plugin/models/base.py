"""The `MODELS` registry: NNX models built by name from a config.

A model is one module of this package (copy `mlp.py`, the smallest) that
registers a factory with its config fields::

  @MODELS.register('mlp', fields=MLPFields)
  def make_mlp(model_fields: MLPFields, *, input_shape, num_outputs, rngs):
    return MLP(input_shape[-1], model_fields.hidden_sizes, num_outputs,
               rngs=rngs)

`input_shape` (one example's, e.g. ``(1,)`` or ``(28, 28, 1)``) and
`num_outputs` (regression targets or classes) come from the task family
(`maml_plugin.tasks.TaskProblem`), `rngs` from ``config.seed``. The module
may hold any NNX state (BatchNorm running averages, Dropout): the trainer
splits it with `maml_plugin.nnx_bridge.NNXModel`.
"""

from __future__ import annotations

import warnings

from flax import nnx

from maml_plugin.registry import Registry

MODELS = Registry('model')


def make_model(name: str, config, *, input_shape: tuple[int, ...],
               num_outputs: int, rngs: nnx.Rngs) -> nnx.Module:
  """The registered model `name`, its fields read from `config`."""
  return MODELS.lookup(name)(MODELS.fields(name).from_config(config),
                             input_shape=tuple(input_shape),
                             num_outputs=num_outputs, rngs=rngs)


def build_model(name: str, config, **kwargs) -> nnx.Module:
  """Deprecated: the former name of `make_model` (registry look-ups are
  ``make_*``: `algorithms.make_algorithm`, `tasks.make_task_problem`)."""
  warnings.warn('models.build_model is now models.make_model',
                DeprecationWarning, stacklevel=2)
  return make_model(name, config, **kwargs)
