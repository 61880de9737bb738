"""Conv-4, the MAML paper's few-shot image network, registered as ``'conv4'``.

Usage::

  model = Conv4(num_classes=5, rngs=nnx.Rngs(0))
  logits = model(images)          # [batch, 28, 28, 1] -> [batch, 5]

From a config (``config.model = 'conv4'``): `Conv4Fields` are its config
fields; the task family gives the image shape and the number of classes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from maml_plugin import fields
from maml_plugin.models import base


def conv3x3_as_matmul(x: jax.Array, kernel: jax.Array, stride: int
                      ) -> jax.Array:
  """A 'SAME' 3x3 convolution as patches times a matrix (im2col).

  `x` is ``[batch, H, W, C_in]``, `kernel` ``[3, 3, C_in, C_out]``. Under
  `jax.vmap` with a per-task kernel (the MAML inner loop) this stays a
  batched matmul, where `lax.conv` would become a grouped convolution that
  XLA's CPU backend runs several times slower.
  """
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ho, wo = -(-h // stride), -(-w // stride)
  # Crop so that the strided windows match 'SAME' padding of lax.conv.
  pad_h = max((ho - 1) * stride + 3 - h, 0)
  pad_w = max((wo - 1) * stride + 3 - w, 0)
  top, left = 1 - pad_h // 2, 1 - pad_w // 2
  patches = [xp[:, top + i: top + i + (ho - 1) * stride + 1: stride,
                left + j: left + j + (wo - 1) * stride + 1: stride]
             for i in range(3) for j in range(3)]
  patches = jnp.concatenate(patches, axis=-1)  # [B, ho, wo, 9 * C_in]
  return patches @ kernel.reshape(-1, kernel.shape[-1])


def batch_norm_transductive(x: jax.Array, scale: jax.Array, bias: jax.Array,
                            eps: float = 1e-5, num_context: int = 0
                            ) -> jax.Array:
  """Batch norm without running statistics (nothing is stored).

  With ``num_context=0`` the statistics are those of the whole batch it sees
  (transductive: the examples influence each other). With ``num_context=n``
  they are those of the first `n` rows only (e.g. a task's support set) and
  are applied to every row, so no other row changes the output of a row.
  """
  stats = x[:num_context] if num_context else x
  mean = jnp.mean(stats, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(stats - mean), axis=(0, 1, 2))
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


class ConvBlock(nnx.Module):
  """3x3 conv (stride 2, or stride 1 then 2x2 max-pool), batch norm, ReLU."""

  def __init__(self, in_features: int, out_features: int, *,
               downsample: str, conv_impl: str, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(),
                                 (3, 3, in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,)))
    self.scale = nnx.Param(jnp.ones((out_features,)))
    self.shift = nnx.Param(jnp.zeros((out_features,)))
    self.downsample = downsample
    self.conv_impl = conv_impl

  def __call__(self, x: jax.Array, num_context: int = 0) -> jax.Array:
    stride = 2 if self.downsample == 'stride' else 1
    if self.conv_impl == 'matmul':
      y = conv3x3_as_matmul(x, self.kernel.value, stride)
    else:
      y = jax.lax.conv_general_dilated(
          x, self.kernel.value, (stride, stride), 'SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = y + self.bias.value
    y = nnx.relu(batch_norm_transductive(y, self.scale.value,
                                         self.shift.value,
                                         num_context=num_context))
    if self.downsample == 'maxpool':
      y = nnx.max_pool(y, (2, 2), (2, 2), 'VALID')
    return y


class Conv4(nnx.Module):
  """The Conv-4 of the MAML paper: 4 x [3x3 conv 64, BN, ReLU] + linear head.

  `downsample='stride'` (MAML's Omniglot network: stride-2 convolutions, then
  the mean over space) or `'maxpool'` (the MAML++ variant: 2x2 max-pooling,
  then flatten). Batch norm stores no statistics, so evaluating never
  changes state; it is transductive (the statistics of the batch it is
  called on) unless a `context` is given (see `__call__`).
  `conv_impl='matmul'` (im2col, fast under vmap on CPU) or `'lax'`.

  Usage::

    model = Conv4(num_classes=5, rngs=nnx.Rngs(0))
    logits = model(images)          # [batch, 28, 28, 1] -> [batch, 5]
  """

  def __init__(self, num_classes: int, *, in_features: int = 1,
               num_filters: int = 64, image_size: int = 28,
               downsample: str = 'stride', conv_impl: str = 'matmul',
               rngs: nnx.Rngs):
    if downsample not in ('stride', 'maxpool'):
      raise ValueError(f"downsample={downsample!r}: must be 'stride' or "
                       "'maxpool'")
    if conv_impl not in ('matmul', 'lax'):
      raise ValueError(f"conv_impl={conv_impl!r}: must be 'matmul' or 'lax'")
    sizes = [in_features] + [num_filters] * 4
    self.blocks = nnx.List([
        ConvBlock(a, b, downsample=downsample, conv_impl=conv_impl, rngs=rngs)
        for a, b in zip(sizes[:-1], sizes[1:])])
    self.downsample = downsample
    size = image_size
    for _ in range(4):
      size = -(-size // 2) if downsample == 'stride' else size // 2
    features = num_filters if downsample == 'stride' else (
        num_filters * size * size)
    self.head = nnx.Linear(features, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, context: jax.Array | None = None
               ) -> jax.Array:
    """Logits of `x`; with `context`, batch norm uses only its statistics.

    ``model(query_x, context=support_x)`` is the non-transductive mode: the
    statistics come from the context (a task's support set, forwarded with
    the same params), so a query example's logits do not depend on the other
    query examples. Without `context` (the reference behaviour) batch norm
    uses the statistics of `x` itself.
    """
    num_context = 0
    if context is not None:
      num_context = context.shape[0]
      x = jnp.concatenate([context, x])
    for block in self.blocks:
      x = block(x, num_context)
    x = x[num_context:]
    if self.downsample == 'stride':
      x = jnp.mean(x, axis=(1, 2))
    else:
      x = x.reshape(x.shape[0], -1)
    return self.head(x)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Conv4Fields(fields.Fields):
  """Conv-4's config fields.

  Attributes:
    num_filters: filters of each convolution (64 in the paper).
    conv_downsample: 'stride' (MAML's Omniglot network) or 'maxpool'
      (MAML++).
  """

  num_filters: int = fields.integer(64)
  conv_downsample: str = fields.field(
      'stride', check=fields.one_of('stride', 'maxpool'),
      allowed="'stride' or 'maxpool'")


@base.MODELS.register('conv4', fields=Conv4Fields)
def make_conv4(model_fields: Conv4Fields, *, input_shape: tuple[int, ...],
               num_outputs: int, rngs: nnx.Rngs) -> Conv4:
  """Conv-4 for square images ``input_shape = (size, size, channels)``."""
  size, _, channels = input_shape
  if model_fields.conv_downsample == 'maxpool' and size < 16:
    raise fields.FieldError(
        f"conv_downsample='maxpool': needs images of at least 16x16 (four "
        f"2x2 poolings), the task's are {size}x{size}; use 'stride' or "
        'larger images')
  return Conv4(num_outputs, in_features=channels,
               num_filters=model_fields.num_filters, image_size=size,
               downsample=model_fields.conv_downsample, rngs=rngs)
