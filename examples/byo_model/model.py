"""A user's own Flax NNX network for 28x28x1 Omniglot: nothing MAML-specific.

The Omniglot network of the MAML paper: four blocks of a 3x3 convolution with
stride 2 (28 -> 14 -> 7 -> 4 -> 2), batch norm and ReLU, then the mean over
space, dropout and a linear head. The batch norm layers keep running
averages (`nnx.BatchStat`) and the dropout layer draws from an RNG stream:
the state `maml_plugin.NNXModel` carries.
"""

from __future__ import annotations

import jax
from flax import nnx


class Block(nnx.Module):
  """conv 3x3 (stride 2) -> BatchNorm -> ReLU."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_features, out_features, (3, 3), strides=2,
                         rngs=rngs)
    self.norm = nnx.BatchNorm(out_features, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.relu(self.norm(self.conv(x)))


class OmniglotCNN(nnx.Module):
  """Conv-4 classifier: ``[batch, 28, 28, 1]`` images -> ``[batch, ways]``."""

  def __init__(self, ways: int = 5, channels: int = 64,
               dropout_rate: float = 0.1, *, rngs: nnx.Rngs):
    sizes = [1, channels, channels, channels, channels]
    self.blocks = nnx.List([Block(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.head = nnx.Linear(channels, ways, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for block in self.blocks:
      x = block(x)
    x = x.mean(axis=(1, 2))  # [batch, 2, 2, channels] -> [batch, channels]
    return self.head(self.dropout(x))
