"""Episodes of a user's own folder of class folders (the 'image_folder'
family), from configs/maml_image_folder.py and overrides alone.

The test writes 8 class folders of 4 images each, of mixed sizes and
formats (PNG, JPEG, greyscale, a non-square one), plus files that are not
images (a .txt, a hidden file), which are left alone. Every pixel of
class g is ``25 * g`` plus noise below 8, so an image tells its class.
"""

import os

import jax
import numpy as np
from PIL import Image
import pytest

from maml_plugin import config_files
from maml_plugin import tasks
from maml_plugin import train
from maml_plugin.config_validation import ConfigError
from maml_plugin.tasks import episodic
from maml_plugin.tasks import image_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ['ant', 'bee', 'cat', 'dog', 'eel', 'fox', 'gnu', 'hen']
PER_CLASS = 4


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('photos')
  rng = np.random.default_rng(0)
  for g, name in enumerate(CLASSES):
    (root / name).mkdir()
    for i in range(PER_CLASS):
      shape = [(30, 30, 3), (20, 36, 3), (24, 24, 3), (30, 30, 3)][i]
      pixels = (25 * g + rng.integers(0, 8, shape)).astype(np.uint8)
      im = Image.fromarray(pixels)
      if i == 2:
        im = im.convert('L')
      im.save(root / name / f'{i}.{"JPG" if i == 3 else "png"}', quality=95)
    (root / name / 'notes.txt').write_text('not an image')
    (root / name / '.DS_Store').write_bytes(b'\0')
  (root / '.hidden_class').mkdir()
  return str(root)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv('MAML_PLUGIN_CACHE_DIR', str(tmp_path / 'cache'))
  return tmp_path / 'cache'


def _config(folder, arg='quick', **overrides):
  config = config_files.load(
      os.path.join(REPO, 'configs', f'maml_image_folder.py:{arg}'))
  config.data_dir = folder
  config.image_size = 16
  config.ways = 2
  config.update(overrides)
  return config


def _classes(images):
  """The class each image was made from (its mean pixel; a batch's images
  are scaled to [0, 1], the sampler's are uint8)."""
  images = np.asarray(images)
  scale = 1 if images.dtype == np.uint8 else 255
  return np.floor(images.mean(axis=(-3, -2, -1)) * scale / 25).astype(int)


def _split_of(source):
  """The class folders the images of an `EpisodicTasks` come from."""
  return sorted(CLASSES[g] for g in set(_classes(source.images)))


def test_fractions_split_the_classes_by_seed(folder):
  """Fractions: disjoint splits of the stated sizes, the same for the same
  seed, another for another seed (pins a split that ignores the seed or
  lets the two overlap)."""
  splits = {}
  for seed in (0, 1):
    problem = tasks.build_task_problem('image_folder', _config(
        folder, train_fraction=0.5, eval_fraction=0.25, split_seed=seed))
    splits[seed] = (_split_of(problem.tasks), _split_of(problem.eval_tasks))
    assert len(splits[seed][0]) == 4 and len(splits[seed][1]) == 2
    assert not set(splits[seed][0]) & set(splits[seed][1])
    again = image_folder.split_classes(image_folder.ImageFolderFields.build({
        'data_dir': folder, 'train_fraction': 0.5, 'eval_fraction': 0.25,
        'split_seed': seed, 'ways': 2, 'num_support': 1, 'num_query': 1,
        'eval_num_query': 1}))
    assert tuple(sorted(s) for s in again) == splits[seed]
  assert splits[0] != splits[1]


def test_named_classes_resized_labelled_and_episodic(folder):
  """Lists of names: each split holds exactly its classes' images, resized
  to image_size with the channels asked for, and every task label stands
  for one source class (pins labels that do not follow the images)."""
  problem = tasks.build_task_problem('image_folder', _config(
      folder, train_classes=('ant', 'cat', 'eel'), eval_classes=('hen', 'bee'),
      channels=1, image_size=17))
  assert _split_of(problem.tasks) == ['ant', 'cat', 'eel']
  assert _split_of(problem.eval_tasks) == ['bee', 'hen']
  assert problem.input_shape == (17, 17, 1)
  assert problem.tasks.images.shape == (3 * PER_CLASS, 17, 17, 1)
  batch = problem.tasks.train_batch(jax.random.key(0), 4)
  for part in ('support', 'query'):
    source = _classes(batch[part]['x'])
    y = np.asarray(batch[part]['y'])
    for t in range(len(y)):
      assert len(set(source[t][y[t] == 0])) == 1
      assert len(set(source[t])) == 2


def test_decoded_images_are_cached_and_reused(folder, cache_dir,
                                              monkeypatch):
  first = image_folder.load_classes(folder, ['dog', 'fox'], image_size=10)
  assert len(os.listdir(cache_dir)) == 1

  def no_decoding(*args):
    raise AssertionError('decoded again')

  monkeypatch.setattr(image_folder, '_decode', no_decoding)
  again = image_folder.load_classes(folder, ['dog', 'fox'], image_size=10)
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])
  with pytest.raises(AssertionError, match='decoded again'):  # Another size.
    image_folder.load_classes(folder, ['dog', 'fox'], image_size=11)


@pytest.mark.parametrize('overrides,message', [
    ({'train_classes': ('ant', 'yak'), 'eval_classes': ('bee',)},
     "config.train_classes: 'yak' is not a class folder of config.data_dir={d!r}; "
     'its classes: ant, bee, cat, dog, eel, fox, gnu, hen'),
    ({'train_classes': ('ant', 'bee'), 'eval_classes': ('bee', 'cat')},
     "config.eval_classes=('bee', 'cat'): must not hold 'bee', which "
     'train_classes holds'),
    ({'train_classes': ('ant', 'bee')},
     'config.eval_classes=(): must name classes too when train_classes does '
     '(or leave both empty to split by fractions)'),
    ({'train_fraction': 0.9, 'eval_fraction': 0.2},
     'config.eval_fraction=0.2: must be at most 1 - config.train_fraction = 0.1'),
    ({'train_fraction': 0.9, 'eval_fraction': 0.05},
     'config.train_fraction=0.9, config.eval_fraction=0.05: give 7 and 0 of the 8 '
     'classes of config.data_dir={d!r}; each split needs at least one'),
    ({'train_fraction': 1.0},
     'config.train_fraction=1.0: must be a number in (0, 1)'),
    ({'ways': 3, 'train_fraction': 0.75, 'eval_fraction': 0.25},
     'config.ways=3: must be at most 2, the classes of the evaluation '
     'split of {d!r}'),
    ({'num_support': 3},
     'config.num_support + config.num_query = 5: must be at most 4, the '
     'images per class of the training split of {d!r}'),
    ({'data_dir': ''},
     "config.data_dir='': must be a folder with one sub-folder of images "
     'per class'),
    ({'data_dir': '/no/such/folder'},
     "config.data_dir='/no/such/folder': not a folder; must hold one "
     'sub-folder of images per class'),
    ({'channels': 2}, 'config.channels=2: must be one of 1, 3'),
    ({'image_size': 12},
     "config.conv_downsample='maxpool': needs images of at least 16x16 "
     "(four 2x2 poolings), the task's are 12x12; use 'stride' or larger "
     'images'),
])
def test_a_value_the_folder_cannot_supply_is_one_line(folder, overrides,
                                                      message):
  with pytest.raises(ConfigError) as err:
    train.create_problem(_config(folder, **overrides))
  assert str(err.value) == message.format(d=folder)


def test_a_folder_without_classes_or_with_a_bad_image_is_one_line(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ConfigError, match=r"holds no sub-folder; must hold one"):
    train.create_problem(_config(str(tmp_path / 'empty')))
  for name in ('a', 'b'):
    (tmp_path / 'bad' / name).mkdir(parents=True)
    Image.new('RGB', (4, 4)).save(tmp_path / 'bad' / name / '0.png')
  (tmp_path / 'bad' / 'b' / '1.jpg').write_bytes(b'not a jpeg')
  with pytest.raises(episodic.EpisodeError) as err:
    image_folder.load_classes(str(tmp_path / 'bad'), ['a', 'b'],
                              image_size=4)
  assert str(err.value).startswith(
      f'{tmp_path / "bad" / "b" / "1.jpg"}: not a readable image '
      '(UnidentifiedImageError: ')
  assert '\n' not in str(err.value)
