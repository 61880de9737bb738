"""A Flax NNX model of your own, ``config.model = 'norm_mlp'``.

Any `nnx.Module` works, BatchNorm running averages and Dropout included:
the trainer splits it into the parameters the inner loop adapts, the
state its train steps carry and its RNG streams. Register a factory in
`maml_plugin.models.MODELS` that builds the module from its config fields
(a `maml_plugin.fields.Fields` dataclass) and from the task family's
``input_shape`` and ``num_outputs``.
"""

import dataclasses

from flax import nnx

from maml_plugin import fields
from maml_plugin.models import MODELS


class NormMLP(nnx.Module):

  def __init__(self, in_features, width, out_features, dropout_rate, rngs):
    self.hidden = nnx.Linear(in_features, width, rngs=rngs)
    self.norm = nnx.BatchNorm(width, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.out = nnx.Linear(width, out_features, rngs=rngs)

  def __call__(self, x):
    return self.out(self.dropout(nnx.relu(self.norm(self.hidden(x)))))


@dataclasses.dataclass(frozen=True, kw_only=True)
class NormMLPFields(fields.Fields):
  width: int = fields.integer(16)
  dropout_rate: float = fields.field(
      0.1, check=lambda v: isinstance(v, float) and 0 <= v < 1,
      allowed='a float in [0, 1)')


@MODELS.register('norm_mlp', fields=NormMLPFields)
def make_norm_mlp(model_fields: NormMLPFields, *, input_shape, num_outputs,
                  rngs):
  return NormMLP(input_shape[-1], model_fields.width, num_outputs,
                 model_fields.dropout_rate, rngs)
