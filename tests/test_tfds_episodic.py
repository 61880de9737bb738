"""Episodic few-shot on any TFDS image dataset from a config alone.

The test writes a small mnist-shaped dataset (``image`` 28x28x1 uint8,
``label`` of 10 classes) with TFDS's own `store_as_tfds_dataset` into a
temporary data_dir: not one of ours, and nothing downloads. Its train
split holds classes 0-5 and its test split classes 6-9; every image of
class c is ``20 * c`` plus noise below 8, so an image tells which class,
and so which split, it came from.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import maml_tfds
from maml_plugin import config_validation
from maml_plugin import train
from maml_plugin.config_validation import ConfigError
from maml_plugin.tasks import episodic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = 'tiny_digits'
PER_CLASS = 6
SPLIT_CLASSES = {'train': range(0, 6), 'test': range(6, 10)}


def _split(classes, rng):
  labels = np.repeat(np.array(classes, np.int64), PER_CLASS)
  images = (20 * labels[:, None, None, None]
            + rng.integers(0, 8, (len(labels), 28, 28, 1))).astype(np.uint8)
  return images, labels


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  tfds = pytest.importorskip('tensorflow_datasets')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  splits = {}
  for split, classes in SPLIT_CLASSES.items():
    images, labels = _split(classes, rng)
    splits[split] = tf.data.Dataset.from_tensor_slices(
        {'image': images, 'label': labels})
  path = str(tmp_path_factory.mktemp('tfds'))
  tfds.dataset_builders.store_as_tfds_dataset(
      name=NAME, version='1.0.0', data_dir=path, split_datasets=splits,
      features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(28, 28, 1)),
          'label': tfds.features.ClassLabel(num_classes=10)}))
  return path


def _config(data_dir, **overrides):
  config = maml_tfds.get_config('quick')
  config.dataset = NAME
  config.data_dir = data_dir
  config.ways = 3  # The test split has 4 classes.
  config.update(overrides)
  return config


def test_every_variant_is_valid():
  for arg in (None, 'quick'):
    config_validation.validate(maml_tfds.get_config(arg))


def test_episodes_come_from_the_named_splits_and_features(data_dir):
  """Training tasks hold only train-split images and held-out tasks only
  test-split ones, each labelled by its own class (pins a swapped split or
  key, and labels that do not follow the images)."""
  import jax  # pylint: disable=g-import-not-at-top
  problem = train.create_problem(_config(data_dir))
  for source, split in ((problem.tasks, 'train'), (problem.eval_tasks, 'test')):
    assert source.num_classes == len(SPLIT_CLASSES[split])
    batch = (source.train_batch(jax.random.key(0), 8) if split == 'train'
             else source.held_out(seed=0, num_tasks=8, num_query=2))
    for part in ('support', 'query'):
      x = np.asarray(batch[part]['x'])  # [tasks, ways * shots, 28, 28, 1]
      assert x.shape[2:] == (28, 28, 1)
      source_class = np.floor(x.mean(axis=(2, 3, 4)) * 255 / 20).astype(int)
      assert set(np.unique(source_class)) <= set(SPLIT_CLASSES[split])
      # One source class per task label, a different one per label.
      y = np.asarray(batch[part]['y'])
      for t in range(len(y)):
        per_label = {int(c) for c in source_class[t][y[t] == 0]}
        assert len(per_label) == 1
        assert len({int(c) for c in source_class[t]}) == 3


def test_main_trains_and_evaluates_a_tfds_dataset_of_the_users(data_dir,
                                                               tmp_path):
  """`python -m maml_plugin.main` on the shipped config, the dataset named
  by overrides only: it trains, checkpoints and reports accuracy."""
  workdir = tmp_path / 'work'
  proc = subprocess.run(
      [sys.executable, '-m', 'maml_plugin.main',
       '--config=configs/maml_tfds.py:quick', f'--workdir={workdir}',
       f'--config.dataset={NAME}', f'--config.data_dir={data_dir}',
       '--config.ways=3'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / 'evaluation.json') as f:
    report = json.load(f)
  assert report['metric'] == 'accuracy' and report['train_step'] == 20
  assert report['num_tasks'] == 10
  assert os.listdir(workdir / 'checkpoints') == ['20']


def test_main_names_the_features_a_dataset_has(data_dir, tmp_path):
  workdir = tmp_path / 'work'
  proc = subprocess.run(
      [sys.executable, '-m', 'maml_plugin.main',
       '--config=configs/maml_tfds.py:quick', f'--workdir={workdir}',
       f'--config.dataset={NAME}', f'--config.data_dir={data_dir}',
       '--config.ways=3', '--config.image_key=pixels'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      f"maml_plugin: TFDS dataset '{NAME}' has no feature "
      "image_key='pixels'; its features: image, label"), proc.stderr[-2000:]
  assert not workdir.exists()


@pytest.mark.parametrize('overrides,message', [
    ({'eval_split': 'validation'},
     "TFDS dataset 'tiny_digits' under data_dir={d!r} has no split "
     "'validation'; its splits: test, train"),
    ({'train_split': 'train[:50%]+extra'},
     "TFDS dataset 'tiny_digits' under data_dir={d!r} has no split "
     "'extra'; its splits: test, train"),
    ({'dataset': 'mnist'},
     "TFDS dataset 'mnist' is not prepared under data_dir={d!r}; prepare it "
     'first (e.g. tfds build mnist --data_dir=DIR); nothing is downloaded at '
     'run time'),
    ({'dataset': 'no_such_set'},
     "TFDS dataset 'no_such_set' is not prepared under data_dir={d!r} and no "
     'builder of that name is installed; prepare it first'),
])
def test_a_dataset_or_split_that_is_not_there_says_so(data_dir, overrides,
                                                      message):
  """Never a download: a registered TFDS dataset (`mnist`) that is not in
  data_dir is refused like an unknown one."""
  with pytest.raises(episodic.EpisodeError) as err:
    train.create_problem(_config(data_dir, **overrides))
  assert str(err.value).startswith(message.format(d=data_dir))
  assert '\n' not in str(err.value)
  assert not os.path.exists(os.path.join(data_dir, 'mnist', '3.0.1',
                                         'dataset_info.json'))


@pytest.mark.parametrize('overrides,message', [
    ({'ways': 5},
     "config.ways=5: must be at most 4, the classes of "
     "config.eval_split='test' of 'tiny_digits'"),
    ({'num_support': 6},
     "config.num_support + config.num_query = 7: must be at most 6, the "
     "images per class of config.train_split='train' of 'tiny_digits'"),
    ({'dataset': ''}, "config.dataset='': must be a TFDS dataset name"),
])
def test_sizes_the_dataset_cannot_supply_name_the_field(data_dir, overrides,
                                                        message):
  config = _config(data_dir, **overrides)
  with pytest.raises(ConfigError) as err:
    config_validation.validate(config)
    train.create_problem(config)
  assert str(err.value).startswith(message), str(err.value)
