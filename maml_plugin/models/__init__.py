"""Flax NNX models, registered by name (``config.model``). Modules only.

Usage::

  from maml_plugin.models import MLP, Conv4
  model = MLP(hidden_sizes=(40, 40), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)   # split once
  y = nnx.merge(graphdef, params)(x)               # inside pure functions

`base` holds the `MODELS` registry; each other module is one model:
`mlp` (the smallest: copy it to add one) and `conv4`.
"""

from maml_plugin.models import conv4
from maml_plugin.models import mlp
from maml_plugin.models.base import MODELS
from maml_plugin.models.base import build_model
from maml_plugin.models.base import make_model
from maml_plugin.models.conv4 import Conv4
from maml_plugin.models.conv4 import ConvBlock
from maml_plugin.models.conv4 import batch_norm_transductive
from maml_plugin.models.conv4 import conv3x3_as_matmul
from maml_plugin.models.mlp import MLP
