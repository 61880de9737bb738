"""A ReLU multi-layer perceptron, registered as ``'mlp'``.

The smallest model here: copy it to add one (the module, its config
fields, a factory registered under a new name, an import in `__init__.py`).

Usage::

  model = MLP(1, hidden_sizes=(40, 40), out_features=1, rngs=nnx.Rngs(0))
  y = model(x)                                     # [batch, 1] -> [batch, 1]

From a config (``config.model = 'mlp'``, ``config.hidden_sizes``): the task
family gives the input and output sizes.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
from flax import nnx

from maml_plugin import fields
from maml_plugin.models import base


class MLP(nnx.Module):
  """A ReLU multi-layer perceptron regressor (1-40-40-1 in the MAML paper)."""

  def __init__(self, in_features: int = 1, hidden_sizes: Sequence[int] = (40, 40),
               out_features: int = 1, *, rngs: nnx.Rngs):
    sizes = [in_features, *hidden_sizes, out_features]
    self.layers = nnx.List([
        nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
    return self.layers[-1](x)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLPFields(fields.Fields):
  """The MLP's config fields.

  Attributes:
    hidden_sizes: the widths of the hidden layers.
  """

  hidden_sizes: tuple[int, ...] = fields.field(
      (40, 40), check=fields.positive_int_tuple,
      allowed='a non-empty tuple of ints > 0')


@base.MODELS.register('mlp', fields=MLPFields)
def make_mlp(model_fields: MLPFields, *, input_shape: tuple[int, ...],
             num_outputs: int, rngs: nnx.Rngs) -> MLP:
  """An MLP on inputs ``[batch, features]`` (``input_shape = (features,)``)."""
  (features,) = input_shape
  return MLP(features, tuple(model_fields.hidden_sizes), num_outputs,
             rngs=rngs)
