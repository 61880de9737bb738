"""TFDS builders: registered on import, prepared offline, same distribution;
one per module, so `tfds build <module>.py` finds it."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

import maml_plugin.tasks  # pylint: disable=g-bad-import-order,unused-import
from maml_plugin.tasks import SinusoidTasks
from maml_plugin.tasks import miniimagenet_tfds
from maml_plugin.tasks import omniglot
from maml_plugin.tasks import omniglot_tfds
from maml_plugin.tasks import sinusoid_tfds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS_DIR = os.path.join(REPO, 'maml_plugin', 'tasks')

# `tfds build ARGS`. The `tfds` command imports all of its subcommands, and
# `convert_format` needs apache_beam; without it, run TFDS's own `build`
# subcommand (the parser and the code `tfds build` runs) directly.
_BUILD_COMMAND = """
from absl import app
from tensorflow_datasets.scripts.cli import build, cli_utils
app.run(lambda args: args.execute(),
        flags_parser=cli_utils.make_flags_parser(build.Args, description=''))
"""


def _tfds_build(*args: str) -> subprocess.CompletedProcess:
  if importlib.util.find_spec('apache_beam') is not None:
    command = [sys.executable, '-m', 'tensorflow_datasets.scripts.cli.main',
               'build', *args]
  else:
    command = [sys.executable, '-c', _BUILD_COMMAND, *args]
  # From the user's folder (not the repository), with the package importable.
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run(command, cwd=os.path.dirname(REPO), env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_builders_are_registered_on_import():
  names = tfds.list_builders(with_community_datasets=False)
  assert {'sinusoid_tasks', 'omniglot_tasks', 'mini_imagenet_tasks'} <= set(
      names)


def test_sinusoid_tasks_load_and_match_the_in_process_sampler(tmp_path,
                                                             monkeypatch):
  # A smaller train split keeps the test short; the test split is the real one.
  monkeypatch.setattr(sinusoid_tfds, 'SINUSOID_TRAIN_TASKS', 2_000)
  data_dir = str(tmp_path)
  tfds.builder('sinusoid_tasks/shots5', data_dir=data_dir
               ).download_and_prepare()
  test = tfds.as_numpy(tfds.load('sinusoid_tasks/shots5', split='test',
                                 data_dir=data_dir, batch_size=-1))
  assert test['support']['x'].shape == (600, 5, 1)
  expected = SinusoidTasks(5, 5).held_out(sinusoid_tfds.TEST_SEED, 600, 5)
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
  monkeypatch.setattr(sinusoid_tfds, 'SINUSOID_TRAIN_TASKS', 1_000)
  data_dir = str(tmp_path)
  tfds.builder('sinusoid_tasks/shots10', data_dir=data_dir
               ).download_and_prepare(file_format='array_record')
  source = tfds.data_source('sinusoid_tasks/shots10', split='test',
                            data_dir=data_dir)
  assert len(source) == 600
  example = source[123]
  assert example['support']['x'].shape == (10, 1)
  assert 0.1 <= float(example['amplitude']) <= 5.0


@pytest.mark.parametrize('module,name', [
    (sinusoid_tfds, 'sinusoid_tasks'), (omniglot_tfds, 'omniglot_tasks'),
    (miniimagenet_tfds, 'mini_imagenet_tasks')])
def test_each_builder_module_holds_exactly_one_builder(module, name):
  builder_cls = tfds.core.community.builder_cls_from_module(module.__name__)
  assert builder_cls.name == name


def test_tfds_build_of_the_sinusoid_module_path(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  _tfds_build(os.path.join(TASKS_DIR, 'sinusoid_tfds.py'), '--config=shots5',
              f'--data_dir={data_dir}', '--max_examples_per_split=20')
  test = tfds.as_numpy(tfds.load('sinusoid_tasks/shots5', split='test',
                                 data_dir=data_dir, batch_size=-1))
  assert test['support']['x'].shape == (20, 5, 1)
  # The first 20 of the 600 fixed test tasks of the in-process sampler.
  expected = SinusoidTasks(5, 5).held_out(sinusoid_tfds.TEST_SEED, 600, 5)
  np.testing.assert_allclose(np.sort(test['amplitude']),
                             np.sort(np.asarray(expected['amplitude'][:20])))


def test_tfds_build_by_name_with_imports(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  _tfds_build('sinusoid_tasks/shots10', '--imports=maml_plugin.tasks',
              f'--data_dir={data_dir}', '--max_examples_per_split=10')
  builder = tfds.builder('sinusoid_tasks/shots10', data_dir=data_dir)
  assert builder.info.splits['train'].num_examples == 10


def test_tfds_build_of_the_omniglot_module_path(omniglot_env, tmp_path):
  data_dir = str(tmp_path / 'tfds')
  _tfds_build(os.path.join(TASKS_DIR, 'omniglot_tfds.py'), '--config=lake',
              f'--data_dir={data_dir}', f'--manual_dir={omniglot_env}',
              '--max_examples_per_split=10')
  builder = tfds.builder('omniglot_tasks/lake', data_dir=data_dir)
  assert set(builder.info.splits) == {'background', 'evaluation'}
  images = tfds.as_numpy(builder.as_dataset(split='evaluation',
                                            batch_size=-1))['image']
  assert images.shape == (10, 28, 28, 1)


def test_omniglot_tasks_reference_config_builds_the_reference_splits(
    tmp_path, monkeypatch):
  """``omniglot_tasks/reference``: its train / val / test are the
  reference_* splits of `omniglot.load_split` (replaced here by tiny
  stand-ins, so no 32,460 PNGs are encoded), labels in one space."""
  loaded = []

  def fake_split(split, data_dir=None):
    loaded.append(split)
    n = {'reference_train': 3, 'reference_val': 1, 'reference_test': 2}[split]
    return omniglot.ImageSet(
        images=np.full((n * 2, 28, 28, 1), 7 * n, np.uint8),
        labels=np.repeat(np.arange(n, dtype=np.int32), 2),
        class_names=tuple(f'{split}/character{i:02d}/rot000'
                          for i in range(n)))

  monkeypatch.setattr(omniglot, 'load_split', fake_split)
  monkeypatch.setattr(omniglot, 'resolve_data_dir', lambda d: d)
  data_dir = str(tmp_path / 'tfds')
  builder = tfds.builder('omniglot_tasks/reference', data_dir=data_dir)
  builder.download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))
  assert sorted(loaded) == ['reference_test', 'reference_train',
                            'reference_val']
  splits = builder.info.splits
  assert {k: splits[k].num_examples for k in splits} == {
      'train': 6, 'val': 2, 'test': 4}
  test = tfds.data_source('omniglot_tasks/reference', split='test',
                          data_dir=data_dir)
  assert sorted(int(test[i]['label']) for i in range(4)) == [4, 4, 5, 5]
