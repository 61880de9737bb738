"""TFDS builders: registered on import, prepared offline, same distribution."""

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

import maml_plugin.tasks  # pylint: disable=g-bad-import-order,unused-import
from maml_plugin.tasks import SinusoidTasks
from maml_plugin.tasks import omniglot
from maml_plugin.tasks import tfds_builders


def test_builders_are_registered_on_import():
  names = tfds.list_builders(with_community_datasets=False)
  assert 'sinusoid_tasks' in names and 'omniglot_tasks' in names


def test_sinusoid_tasks_load_and_match_the_in_process_sampler(tmp_path,
                                                             monkeypatch):
  # A smaller train split keeps the test short; the test split is the real one.
  monkeypatch.setattr(tfds_builders, 'SINUSOID_TRAIN_TASKS', 2_000)
  data_dir = str(tmp_path)
  tfds.builder('sinusoid_tasks/shots5', data_dir=data_dir
               ).download_and_prepare()
  test = tfds.as_numpy(tfds.load('sinusoid_tasks/shots5', split='test',
                                 data_dir=data_dir, batch_size=-1))
  assert test['support']['x'].shape == (600, 5, 1)
  expected = SinusoidTasks(5, 5).held_out(tfds_builders.TEST_SEED, 600, 5)
  np.testing.assert_allclose(np.sort(test['amplitude']),
                             np.sort(np.asarray(expected['amplitude'])))
  train = tfds.builder('sinusoid_tasks/shots5', data_dir=data_dir)
  assert train.info.splits['train'].num_examples == (
      2_000)
  a = test['amplitude'][:, None, None]
  p = test['phase'][:, None, None]
  np.testing.assert_allclose(test['query']['y'],
                             a * np.sin(test['query']['x'] - p), atol=1e-5)


def test_omniglot_tasks_with_a_wrong_manual_dir_is_one_line(tmp_path):
  builder = tfds.builder('omniglot_tasks/lake', data_dir=str(tmp_path / 'd'))
  with pytest.raises(omniglot.OmniglotError) as err:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path)))
  assert 'missing omniglot/images_background.zip' in str(err.value)
  assert '\n' not in str(err.value)


def test_array_record_gives_random_access_with_data_source(tmp_path,
                                                           monkeypatch):
  pytest.importorskip('array_record')
  monkeypatch.setattr(tfds_builders, 'SINUSOID_TRAIN_TASKS', 1_000)
  data_dir = str(tmp_path)
  tfds.builder('sinusoid_tasks/shots10', data_dir=data_dir
               ).download_and_prepare(file_format='array_record')
  source = tfds.data_source('sinusoid_tasks/shots10', split='test',
                            data_dir=data_dir)
  assert len(source) == 600
  example = source[123]
  assert example['support']['x'].shape == (10, 1)
  assert 0.1 <= float(example['amplitude']) <= 5.0
