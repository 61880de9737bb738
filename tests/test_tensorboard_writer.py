"""maml_plugin.tensorboard_writer: event files TensorBoard reads back with
the tags, steps and values written, the same as CLU's TensorFlow writer's
(where TensorFlow is installed), written without TensorFlow."""

import glob
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from maml_plugin import tensorboard_writer
from maml_plugin import tf_optional
from tests import without_tensorflow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMAGES = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3, 1) * 10
FLOAT_IMAGE = np.linspace(0, 1, 4 * 3 * 3).reshape(4, 3, 3)


def _write(writer):
  """What a trainer writes (hparams, scalars at several steps) and the
  rest of CLU's interface."""
  writer.write_hparams({'meta_lr': 0.001, 'task': {'name': 'sinusoid'},
                        'num_inner_steps': 5, 'first_order': False})
  writer.write_scalars(10, {'eval/mse_step1_mean': 0.25, 'steps_per_sec': 3})
  writer.write_scalars(20, {'eval/mse_step1_mean': np.float32(0.125)})
  writer.write_texts(20, {'note': 'resumed'})
  writer.write_images(20, {'digits': IMAGES, 'ramp': FLOAT_IMAGE})
  writer.write_histograms(30, {'weights': np.arange(100.0)},
                          num_buckets={'weights': 10})
  writer.close()


def _decoded(value, plugin):
  array = tensor_util.make_ndarray(value.tensor)
  if plugin == 'images':  # [width, height, png, ...]
    return (tuple(array[:2]), tuple(
        np.asarray(Image.open(io.BytesIO(png))).tobytes()
        for png in array[2:]))
  if plugin == 'hparams':
    data = plugin_data_pb2.HParamsPluginData.FromString(
        value.metadata.plugin_data.content)
    return {k: v.WhichOneof('kind') and getattr(v, v.WhichOneof('kind'))
            for k, v in data.session_start_info.hparams.items()}
  if array.dtype == object:
    return array.item().decode()
  return (str(array.dtype), array.tolist())


def _events(logdir):
  """{(tag, step): (plugin, decoded value)} over the event files."""
  out = {}
  for path in glob.glob(os.path.join(logdir, 'events.out.tfevents*')):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        out[(value.tag, event.step)] = (plugin, _decoded(value, plugin))
  return out


@pytest.fixture(scope='module')
def ours(tmp_path_factory):
  logdir = str(tmp_path_factory.mktemp('ours'))
  _write(tensorboard_writer.TensorBoardWriter(logdir))
  return logdir


def test_tensorboard_reads_back_tags_steps_and_values(ours):
  """TensorBoard's own reader (EventAccumulator) sees each scalar at each
  step with its value, and the texts, images and histograms under their
  tags. Pins a dropped step, a renamed tag, a value not written as the
  scalars plugin's float32."""
  acc = event_accumulator.EventAccumulator(
      ours, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  tags = acc.Tags()['tensors']
  assert {'eval/mse_step1_mean', 'steps_per_sec', 'note', 'digits', 'ramp',
          'weights', '_hparams_/session_start_info'} <= set(tags), tags
  points = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
            for e in acc.Tensors('eval/mse_step1_mean')]
  assert points == [(10, 0.25), (20, 0.125)]
  assert [e.step for e in acc.Tensors('steps_per_sec')] == [10]
  assert acc.SummaryMetadata('steps_per_sec').plugin_data.plugin_name == (
      'scalars')
  assert acc.SummaryMetadata('note').plugin_data.plugin_name == 'text'


def test_each_kind_decodes_to_what_was_written(ours):
  events = _events(ours)
  assert events[('steps_per_sec', 10)] == ('scalars', ('float32', 3.0))
  assert events[('note', 20)] == ('text', 'resumed')
  plugin, (size, pngs) = events[('digits', 20)]
  assert plugin == 'images' and size == (b'3', b'4')  # width, height
  assert pngs == tuple(image[..., 0].tobytes() for image in IMAGES)
  plugin, (_, (ramp,)) = events[('ramp', 20)]
  expected = (np.clip(FLOAT_IMAGE * 255.5, 0, 255)).astype(np.uint8)
  assert ramp == expected.tobytes()
  plugin, (dtype, buckets) = events[('weights', 30)]
  assert plugin == 'histograms' and len(buckets) == 10
  assert sum(count for _, _, count in buckets) == 100
  assert events[('_hparams_/session_start_info', 0)] == ('hparams', {
      'meta_lr': 0.001, 'task.name': 'sinusoid', 'num_inner_steps': 5.0,
      'first_order': False})


def test_audio_and_video_are_dropped_with_one_warning(tmp_path, caplog):
  writer = tensorboard_writer.TensorBoardWriter(str(tmp_path))
  for step in (1, 2):
    writer.write_audios(step, {'a': np.zeros((1, 10, 1))}, sample_rate=8000)
    writer.write_videos(step, {'v': np.zeros((1, 2, 4, 4, 3))})
  writer.close()
  warnings = [r.getMessage() for r in caplog.records
              if 'does not write' in r.getMessage()]
  assert len(warnings) == 2, warnings
  assert not [k for k in _events(str(tmp_path)) if k[0] in ('a', 'v')]


def test_default_writer_logs_and_writes_event_files(tmp_path):
  writer = tensorboard_writer.create_default_writer(
      tmp_path, asynchronous=False, collection='eval')
  writer.write_scalars(5, {'loss': 1.5})
  writer.close()
  assert _events(str(tmp_path / 'eval')) == {
      ('loss', 5): ('scalars', ('float32', 1.5))}
  other = tensorboard_writer.create_default_writer(
      tmp_path / 'other', just_logging=True)
  other.write_scalars(5, {'loss': 1.5})
  other.close()
  assert not os.path.exists(tmp_path / 'other')


@pytest.mark.skipif(not tf_optional.installed(),
                    reason="CLU's SummaryWriter needs TensorFlow")
def test_same_events_as_clu_tensorflow_writer(ours, tmp_path):
  """Every (tag, step) CLU's TensorFlow SummaryWriter writes, with the same
  plugin and decoded value (images pixel by pixel, histogram buckets,
  hparams), and nothing else."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  _write(metric_writers.SummaryWriter(str(tmp_path)))
  expected = _events(str(tmp_path))
  assert ('eval/mse_step1_mean', 20) in expected
  assert _events(ours) == expected


_CLU_DEFAULT_WRITER = textwrap.dedent("""
    import sys
    import maml_plugin
    from clu import metric_writers, periodic_actions
    assert 'tensorflow' not in sys.modules
    w = metric_writers.create_default_writer(sys.argv[1], asynchronous=False)
    w.write_scalars(7, {'loss': 0.5})
    w.close()
    print(type(w._writers[-1]).__name__)
""")


def test_clu_imports_and_writes_without_tensorflow(tmp_path):
  """Where TensorFlow is absent, importing maml_plugin lets CLU's
  metric_writers and periodic_actions import (they import TensorFlow's
  writer at import time) and CLU's create_default_writer writes event
  files through TensorBoardWriter."""
  env = without_tensorflow.environment(tmp_path / 'site')
  logdir = str(tmp_path / 'logs')
  proc = subprocess.run([sys.executable, '-c', _CLU_DEFAULT_WRITER, logdir],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == 'TensorBoardWriter'
  assert _events(logdir) == {('loss', 7): ('scalars', ('float32', 0.5))}


def test_each_write_is_on_disk_before_it_returns(tmp_path):
  """No flush, no close: what a run killed (SIGKILL) right after a write
  leaves. Pins TensorBoard's 120-s file buffer: a resumed run does not
  write again the steps its checkpoint holds, so those scalars were lost
  (tests/test_kill_resume.py, random seed 4046686983)."""
  writer = tensorboard_writer.TensorBoardWriter(str(tmp_path))
  writer.write_scalars(50, {'train/query_loss_after': 0.5})
  writer.write_texts(50, {'note': 'before the kill'})
  assert _events(str(tmp_path)) == {
      ('train/query_loss_after', 50): ('scalars', ('float32', 0.5)),
      ('note', 50): ('text', 'before the kill')}
  writer.close()
