"""A CLU `MetricWriter` that writes each point once across resumed runs.

Usage::

  from maml_plugin import new_steps_writer
  writer = new_steps_writer.NewStepsOnlyWriter(
      writer, new_steps_writer.logged_steps(workdir))

A resumed run replays the steps after its checkpoint, whose scalars an
earlier run wrote already to the workdir's event files; written again,
TensorBoard would draw them twice. `logged_steps` reads the last step
logged per tag, and `NewStepsOnlyWriter` (a wrapper, as CLU's
`metric_writers.MultiWriter` is one) passes a scalar on only for a later
step; everything else goes through unchanged.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Mapping, Optional

from clu.metric_writers import interface


def logged_steps(workdir: str) -> dict[str, int]:
  """The last step each scalar was written for in `workdir`'s event files
  (by earlier runs): a resumed run replays the steps after its checkpoint,
  and those points are written already. Per tag: a kill can land after the
  train scalars of a step were written and before its evaluation."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  last = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents*')):
    try:
      for event in event_file_loader.EventFileLoader(path).Load():
        for value in event.summary.value:
          last[value.tag] = max(last.get(value.tag, -1), event.step)
    except Exception:  # A file cut short by a kill: what was read counts.
      continue
  return last


class NewStepsOnlyWriter(interface.MetricWriter):
  """Drops the scalars an earlier run wrote for the same step
  (`logged_steps`), so TensorBoard shows each point once; every other
  call goes to `writer` as it is."""

  def __init__(self, writer: interface.MetricWriter,
               logged: Mapping[str, int]):
    self._writer = writer
    self._logged = dict(logged)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    new = {k: v for k, v in scalars.items()
           if step > self._logged.get(k, -1)}
    if new:
      self._writer.write_scalars(step, new)

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Optional[Mapping[str, Any]] = None):
    self._writer.write_summaries(step, values, metadata)

  def write_images(self, step: int, images: Mapping[str, Any]):
    self._writer.write_images(step, images)

  def write_videos(self, step: int, videos: Mapping[str, Any]):
    self._writer.write_videos(step, videos)

  def write_audios(self, step: int, audios: Mapping[str, Any], *,
                   sample_rate: int):
    self._writer.write_audios(step, audios, sample_rate=sample_rate)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self._writer.write_texts(step, texts)

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Optional[Mapping[str, int]] = None):
    self._writer.write_histograms(step, arrays, num_buckets)

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._writer.write_hparams(hparams)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()
