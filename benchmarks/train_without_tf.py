r"""Runs the trainer (`python -m maml_plugin.main`) where TensorFlow is absent.

CLU's TensorBoard writer imports TensorFlow. Some accelerator images ship JAX,
Flax, optax, orbax and TensorBoard but no TensorFlow, and TensorFlow is too
large to carry there. This script gives CLU a writer that writes the same
TensorBoard event files (scalars as the scalars plugin's tensors, texts as the
text plugin's) with TensorBoard's own pure-Python event writer, then runs the
unchanged trainer with the given flags. Histograms, images and hyperparameter
summaries are logged instead of written.

Where TensorFlow is installed it changes nothing: it runs the trainer as is.

  python benchmarks/train_without_tf.py --config=configs/maml_omniglot.py \
      --workdir=/tmp/omniglot_5w1s
"""

import os
import sys
import time
import types

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _install_tf_free_summary_writer():
  """Registers `clu.metric_writers.summary_writer.SummaryWriter` backed by
  tensorboard's EventFileWriter, before CLU imports its TF one."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.proto import event_pb2
  from tensorboard.compat.proto import summary_pb2
  from tensorboard.plugins.scalar import metadata as scalar_metadata
  from tensorboard.plugins.text import metadata as text_metadata
  from tensorboard.summary.writer import event_file_writer
  from tensorboard.util import tensor_util
  # pylint: enable=g-import-not-at-top

  def summary(tag, value, metadata):
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=tag, metadata=metadata,
        tensor=tensor_util.make_tensor_proto(value))])

  class SummaryWriter:
    """CLU's MetricWriter interface over a TF-free event file writer."""

    def __init__(self, logdir: str):
      self._writer = event_file_writer.EventFileWriter(logdir)

    def _write(self, step, proto):
      self._writer.add_event(event_pb2.Event(
          wall_time=time.time(), step=int(step), summary=proto))

    def write_scalars(self, step, scalars):
      for key, value in scalars.items():
        self._write(step, summary(
            key, np.float32(value),
            scalar_metadata.create_summary_metadata(None, None)))

    def write_texts(self, step, texts):
      for key, value in texts.items():
        self._write(step, summary(
            key, np.array(str(value), dtype=object),
            text_metadata.create_summary_metadata(None, None)))

    def write_summaries(self, step, values, metadata=None):
      del values, metadata
      logging.warning('step %d: summaries are not written without '
                      'TensorFlow', step)

    def write_images(self, step, images):
      logging.warning('step %d: images %s are not written without TensorFlow',
                      step, sorted(images))

    def write_videos(self, step, videos):
      del step, videos

    def write_audios(self, step, audios, *, sample_rate):
      del step, audios, sample_rate

    def write_histograms(self, step, arrays, num_buckets=None):
      del step, arrays, num_buckets

    def write_hparams(self, hparams):
      logging.info('hparams (not written without TensorFlow): %s',
                   dict(hparams))

    def flush(self):
      self._writer.flush()

    def close(self):
      self._writer.close()

  module = types.ModuleType('clu.metric_writers.summary_writer')
  module.SummaryWriter = SummaryWriter
  sys.modules[module.__name__] = module


def main():
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    _install_tf_free_summary_writer()
  from maml_plugin import main as trainer_main  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(trainer_main.main, flags_parser=trainer_main.parse_flags)


if __name__ == '__main__':
  main()
