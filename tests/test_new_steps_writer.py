"""`NewStepsOnlyWriter`: a resumed run writes each TensorBoard point once,
as a CLU `MetricWriter` that forwards everything else unchanged."""

import os

from clu.metric_writers import interface
import numpy as np

from maml_plugin import new_steps_writer
from maml_plugin import tensorboard_writer


class _Writer:

  def __init__(self):
    self.written = []

  def write_scalars(self, step, scalars):
    self.written.append((step, scalars))


class _Calls:
  """Records every call made on it."""

  def __init__(self):
    self.calls = []

  def __getattr__(self, name):
    return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def test_a_resumed_run_writes_only_the_steps_not_logged_yet():
  """Pins `NewStepsOnlyWriter`: a scalar is written only for steps after the
  last one logged for its tag (``>`` -> ``>=`` writes the last logged step
  twice), and nothing at all when every tag is logged."""
  writer = _Writer()
  new_only = new_steps_writer.NewStepsOnlyWriter(
      writer, {'train/loss': 100, 'eval/mse': 50})
  new_only.write_scalars(50, {'train/loss': 1.0, 'eval/mse': 2.0})
  new_only.write_scalars(100, {'train/loss': 3.0, 'eval/mse': 4.0})
  new_only.write_scalars(150, {'train/loss': 5.0})
  assert writer.written == [(100, {'eval/mse': 4.0}),
                            (150, {'train/loss': 5.0})]


def test_it_is_a_clu_metric_writer_forwarding_every_other_call():
  """A CLU `MetricWriter` (what `ReportProgress` and our actions take);
  images, texts, histograms, hparams, summaries, flush and close reach the
  wrapped writer as they were called, whatever step they are for."""
  inner = _Calls()
  writer = new_steps_writer.NewStepsOnlyWriter(inner, {'a': 10})
  assert isinstance(writer, interface.MetricWriter)
  image = np.zeros((1, 2, 2, 3))
  writer.write_images(1, {'a': image})
  writer.write_texts(2, {'a': 'x'})
  writer.write_histograms(3, {'a': image}, {'a': 5})
  writer.write_hparams({'lr': 0.1})
  writer.write_summaries(4, {'a': image}, None)
  writer.write_videos(5, {'a': image})
  writer.write_audios(6, {'a': image}, sample_rate=8)
  writer.flush()
  writer.close()
  assert [c[0] for c in inner.calls] == [
      'write_images', 'write_texts', 'write_histograms', 'write_hparams',
      'write_summaries', 'write_videos', 'write_audios', 'flush', 'close']
  assert inner.calls[2][1] == (3, {'a': image}, {'a': 5})
  assert inner.calls[6][2] == {'sample_rate': 8}


def test_logged_steps_reads_the_last_step_per_tag_and_survives_a_cut_file(
    tmp_path):
  """The last step of each tag over every event file of the workdir; a
  file cut short by a kill counts for what could be read, and a workdir
  without event files has nothing logged."""
  assert new_steps_writer.logged_steps(str(tmp_path)) == {}
  writer = tensorboard_writer.TensorBoardWriter(str(tmp_path))
  writer.write_scalars(10, {'train/loss': 1.0, 'eval/mse': 2.0})
  writer.write_scalars(20, {'train/loss': 0.5})
  writer.close()
  assert new_steps_writer.logged_steps(str(tmp_path)) == {
      'train/loss': 20, 'eval/mse': 10}
  (path,) = [p for p in os.listdir(tmp_path) if 'tfevents' in p]
  with open(tmp_path / path, 'rb') as f:
    data = f.read()
  with open(tmp_path / (path + '.cut'), 'wb') as f:
    f.write(data[:-7])
  assert new_steps_writer.logged_steps(str(tmp_path)) == {
      'train/loss': 20, 'eval/mse': 10}
