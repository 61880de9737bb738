"""Flax NNX models. Modules only: no training logic here.

Usage::

  model = MLP(hidden_sizes=(40, 40), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)   # split once
  y = nnx.merge(graphdef, params)(x)               # inside pure functions
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx


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
