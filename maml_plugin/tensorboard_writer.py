"""A CLU `MetricWriter` that writes TensorBoard event files without
TensorFlow, and the trainer's default writer built on it::

  from maml_plugin import tensorboard_writer
  writer = tensorboard_writer.create_default_writer(workdir)  # as CLU's
  writer.write_scalars(step, {'eval/accuracy_step1_mean': 0.9})

`TensorBoardWriter` writes through the `tensorboard` package's pure-Python
pieces (its `EventFileWriter`, event and summary protos, and each plugin's
summary metadata), so CLU's interface works where TensorFlow is absent
(the default install). What it writes is what CLU's TensorFlow
`SummaryWriter` writes (`tests/test_tensorboard_writer.py` compares the
two): scalars (float32, the scalars plugin), texts, images (PNG-encoded
with PIL, ``[width, height, png, ...]`` as the images plugin reads them),
histograms (30 buckets unless `num_buckets` says otherwise), hparams (the
hparams plugin's session start, at step 0) and raw summaries. Audios and
videos are not written: a warning is logged once (CLU's own writer does
not write videos either).

The trainer uses it whether TensorFlow is installed or not: one writer,
one kind of file, and no TensorFlow needed for a trainer's log.
"""

from __future__ import annotations

from collections.abc import Mapping
import io
import os
import time
from typing import Any

from absl import logging
from clu import metric_writers
from clu.internal import utils as clu_utils
from clu.metric_writers import interface
import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.histogram import summary_v2 as histogram_summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer import event_file_writer
from tensorboard.util import tensor_util

Array = interface.Array
Scalar = interface.Scalar


def _png(image: np.ndarray) -> bytes:
  """One ``[height, width, channels]`` image as PNG: floats in [0, 1] are
  scaled to uint8 as ``tf.image.convert_image_dtype`` does (x 255.5,
  truncated, saturated)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.clip(np.asarray(image, np.float64) * 255.5, 0, 255)
    image = image.astype(np.uint8)
  if image.shape[-1] == 1:
    image = image[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def _image_summary(tag: str, images: np.ndarray) -> summary_pb2.Summary:
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
    raise ValueError(f'write_images: {tag!r} has shape {images.shape}; '
                     'expected [height, width, channels] or [n, height, '
                     'width, channels] with 1, 3 or 4 channels')
  height, width = images.shape[1:3]
  encoded = [str(width).encode(), str(height).encode()]
  encoded += [_png(image) for image in images]
  tensor = tensor_util.make_tensor_proto(np.array(encoded, dtype=object))
  metadata = image_metadata.create_summary_metadata(
      display_name=None, description=None)
  return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
      tag=tag, metadata=metadata, tensor=tensor)])


class TensorBoardWriter(metric_writers.MetricWriter):
  """Writes CLU metrics into TensorBoard event files in `logdir`.

  A drop-in for ``clu.metric_writers.SummaryWriter(logdir)`` that needs
  only the `tensorboard` package; see the module docstring for what it
  writes. Each write call's events are on disk when it returns (a
  kill loses none of them).
  """

  def __init__(self, logdir: str):
    super().__init__()
    self._writer = event_file_writer.EventFileWriter(os.fspath(logdir))
    self._warned = set()

  def _write(self, step: int, summaries):
    """Writes `summaries` at `step` and puts them on disk before returning:
    TensorBoard's writer keeps events in a file buffer until a flush
    (every 120 s), so a run killed after a checkpoint would lose the
    scalars of the steps that checkpoint holds, which a resumed run does
    not write again (TensorFlow's writer flushes every 10 events)."""
    now = time.time()
    for summary in summaries:
      self._writer.add_event(event_pb2.Event(
          wall_time=now, step=int(step), summary=summary))
    self._writer.flush()

  def _not_written(self, kind: str):
    if kind not in self._warned:
      self._warned.add(kind)
      logging.warning('TensorBoardWriter does not write %s; they are '
                      'dropped.', kind)

  def write_summaries(self, step: int, values: Mapping[str, Array],
                      metadata: Mapping[str, Any] | None = None):
    summaries = []
    for key, value in values.items():
      md = metadata.get(key) if metadata is not None else None
      if isinstance(md, bytes):
        md = summary_pb2.SummaryMetadata.FromString(md)
      tensor = tensor_util.make_tensor_proto(np.asarray(value))
      summaries.append(summary_pb2.Summary(value=[summary_pb2.Summary.Value(
          tag=key, metadata=md, tensor=tensor)]))
    self._write(step, summaries)

  def write_scalars(self, step: int, scalars: Mapping[str, Scalar]):
    self._write(step, [scalar_summary.scalar_pb(key, np.asarray(value))
                       for key, value in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, Array]):
    self._write(step, [_image_summary(key, value)
                       for key, value in images.items()])

  def write_videos(self, step: int, videos: Mapping[str, Array]):
    del step, videos
    self._not_written('videos')

  def write_audios(self, step: int, audios: Mapping[str, Array], *,
                   sample_rate: int):
    del step, audios, sample_rate
    self._not_written('audios')

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self._write(step, [text_summary.text_pb(key, str(value))
                       for key, value in texts.items()])

  def write_histograms(self, step: int, arrays: Mapping[str, Array],
                       num_buckets: Mapping[str, int] | None = None):
    self._write(step, [histogram_summary.histogram_pb(
        key, np.asarray(value),
        buckets=None if num_buckets is None else num_buckets.get(key))
                       for key, value in arrays.items()])

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._write(0, [hparams_summary.hparams_pb(
        dict(clu_utils.flatten_dict(hparams)))])

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def create_default_writer(
    logdir: str | os.PathLike[str] | None = None, *,
    just_logging: bool = False, asynchronous: bool = True,
    collection: str | None = None) -> metric_writers.MultiWriter:
  """``clu.metric_writers.create_default_writer`` with `TensorBoardWriter`
  for CLU's TensorFlow `SummaryWriter`: absl log lines, and event files in
  `logdir` (in ``logdir/collection`` with a `collection`) unless
  `just_logging` (a process other than the first of a multi-host run)."""
  writers = [metric_writers.LoggingWriter(collection=collection)]
  if logdir is not None and not just_logging:
    logdir = os.fspath(logdir)
    if collection is not None:
      logdir = os.path.join(logdir, collection)
    writers.append(TensorBoardWriter(logdir))
  if asynchronous:
    return metric_writers.AsyncMultiWriter(writers)
  return metric_writers.MultiWriter(writers)
