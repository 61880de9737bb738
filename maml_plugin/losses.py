"""Task losses that refuse mismatched shapes instead of broadcasting them.

Usage, inside a task loss ``loss_fn(params, batch) -> scalar``::

  def loss_fn(params, batch):
    return losses.mse(predict_fn(params, batch['x']), batch['y'])

  def loss_fn(params, batch):
    return losses.softmax_cross_entropy(logits_fn(params, batch), batch['y'])

  def metric_fn(params, batch):                   # evaluation's accuracy
    return losses.accuracy(logits_fn(params, batch), batch['y'])

``jnp.mean((predictions - y) ** 2)`` with y ``[25, 10]`` against predictions
``[25, 10, 1]`` broadcasts to ``[25, 10, 10]`` and trains on the wrong loss
without a word; these check the shapes when traced (shapes are static under
`jax.jit`, so the check costs nothing per step) and raise ValueError in one
line naming both shapes and the fix.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax


def _shape(a) -> tuple[int, ...]:
  return tuple(np.shape(a) if getattr(a, 'shape', None) is None else a.shape)


def mse(predictions, targets) -> jnp.ndarray:
  """Mean squared error; `targets` must have exactly the predictions' shape.

  Raises:
    ValueError: if the shapes differ (one line: both shapes and the fix).
  """
  p, t = _shape(predictions), _shape(targets)
  if p != t:
    if t + (1,) == p:
      fix = 'add the trailing axis to the targets: y[..., None]'
    elif p + (1,) == t:
      fix = 'drop the trailing axis of the targets: y[..., 0]'
    else:
      fix = "reshape the targets to the predictions' shape"
    raise ValueError(f'mse: targets of shape {t} against predictions of '
                     f'shape {p} would broadcast; {fix}')
  return jnp.mean(jnp.square(predictions - targets))


def _check_labels(name: str, logits, labels) -> None:
  """Integer class ids of shape ``logits.shape[:-1]``, else one line."""
  lg, lb = _shape(logits), _shape(labels)
  if lb != lg[:-1]:
    if lb == lg[:-1] + (1,):
      fix = 'drop the trailing axis of the labels: y[..., 0]'
    elif lb == lg:
      fix = ('labels look one-hot: pass integer class ids, '
             'jnp.argmax(y, -1)')
    else:
      fix = 'give one integer class id per row of logits'
    raise ValueError(f'{name}: labels of shape {lb} against logits of '
                     f'shape {lg}: expected labels of shape {lg[:-1]}; {fix}')
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(f'{name}: labels of dtype {jnp.result_type(labels)}: '
                     'expected integer class ids in [0, classes); cast '
                     'them: y.astype(jnp.int32)')


def softmax_cross_entropy(logits, labels) -> jnp.ndarray:
  """Mean cross-entropy of integer class labels, ``labels.shape ==
  logits.shape[:-1]``.

  Raises:
    ValueError: if `labels` does not have that shape or is not integer
      (one line: both shapes and the fix).
  """
  _check_labels('softmax_cross_entropy', logits, labels)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits, labels) -> jnp.ndarray:
  """The fraction of rows whose largest logit is the label's, with the
  labels of `softmax_cross_entropy` (``argmax(logits) == labels`` on labels
  ``[n, 1]`` would compare ``[n]`` with ``[n, 1]`` as ``[n, n]``).

  Raises:
    ValueError: as `softmax_cross_entropy`.
  """
  _check_labels('accuracy', logits, labels)
  return jnp.mean(jnp.argmax(logits, -1) == labels)
