"""Real Omniglot files: split sizes, disjointness, rotations, error messages."""

import os
import shutil
import zipfile

import numpy as np
import pytest

from maml_plugin.tasks import omniglot
from maml_plugin.tasks.omniglot import OmniglotError

EXPECTED = {
    # split: (classes, images)
    'vinyals_train': (4112, 4112 * 20),
    'vinyals_val': (688, 688 * 20),
    'vinyals_trainval': (4800, 4800 * 20),
    'vinyals_test': (1692, 1692 * 20),
    'lake_background': (964, 964 * 20),
    'lake_evaluation': (659, 659 * 20),
}


def characters(split):
  return {n.rsplit('/', 1)[0] for n in split.class_names}


def alphabets(split):
  return {n.split('/', 1)[0] for n in split.class_names}


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_class_and_image_counts_per_split(omniglot_splits, name):
  split = omniglot_splits[name]
  classes, images = EXPECTED[name]
  assert split.num_classes == classes
  assert split.images.shape == (images, 28, 28, 1)
  assert split.images.dtype == np.uint8
  assert np.array_equal(np.bincount(split.labels), np.full(classes, 20))


def test_vinyals_splits_are_disjoint_in_characters_and_cover_all(
    omniglot_splits):
  train, val, test = (characters(omniglot_splits[f'vinyals_{s}'])
                      for s in ('train', 'val', 'test'))
  assert (len(train), len(val), len(test)) == (1028, 172, 423)
  assert not train & val and not train & test and not val & test
  assert len(train | val | test) == 1623
  assert characters(omniglot_splits['vinyals_trainval']) == train | val


def test_lake_split_is_disjoint_in_alphabets(omniglot_splits):
  background = alphabets(omniglot_splits['lake_background'])
  evaluation = alphabets(omniglot_splits['lake_evaluation'])
  assert (len(background), len(evaluation)) == (30, 20)
  assert not background & evaluation


def test_rotations_are_distinct_classes_of_rotated_images(omniglot_splits):
  split = omniglot_splits['vinyals_train']
  names = {n: i for i, n in enumerate(split.class_names)}
  char = split.class_names[0].rsplit('/', 1)[0]
  ids = [names[f'{char}/rot{d:03d}'] for d in (0, 90, 180, 270)]
  assert len(set(ids)) == 4
  base = split.images[split.labels == ids[0]]
  for k, cid in enumerate(ids):
    rotated = split.images[split.labels == cid]
    np.testing.assert_array_equal(rotated, np.rot90(base, k, axes=(1, 2)))
    if k:
      assert not np.array_equal(rotated, base)


def test_images_are_ink_on_dark_paper(omniglot_splits):
  images = omniglot_splits['lake_evaluation'].images
  # Strokes cover a small part of each character: bright ink, dark paper.
  assert 10 < images.mean() < 80
  assert images.max() == 255 and images.min() == 0


def test_decoded_cache_is_reused(omniglot_splits, omniglot_env):
  cache = os.environ[omniglot.CACHE_DIR_ENV]
  files = os.listdir(cache)
  assert len(files) == 1 and files[0].endswith('.npz')
  again = omniglot.load_split('vinyals_val')
  np.testing.assert_array_equal(again.images,
                                omniglot_splits['vinyals_val'].images)
  assert os.listdir(cache) == files


def test_missing_data_dir_names_the_expected_files(tmp_path):
  with pytest.raises(OmniglotError) as err:
    omniglot.load_split('vinyals_test', data_dir=str(tmp_path))
  text = str(err.value)
  assert '\n' not in text
  assert 'omniglot/images_background.zip' in text
  assert 'omniglot/images_evaluation.zip' in text
  assert 'omniglot/splits/vinyals/' in text and 'test.txt' in text
  assert str(tmp_path) in text


def test_unset_data_dir_names_the_environment_variable(monkeypatch):
  monkeypatch.delenv(omniglot.DATA_DIR_ENV, raising=False)
  with pytest.raises(OmniglotError) as err:
    omniglot.load_split('vinyals_test', data_dir='')
  assert omniglot.DATA_DIR_ENV in str(err.value)
  assert '\n' not in str(err.value)


def test_partly_missing_dir_names_only_the_missing_files(tmp_path,
                                                         omniglot_env):
  root = tmp_path / 'omniglot'
  shutil.copytree(os.path.join(omniglot_env, 'omniglot', 'splits'),
                  root / 'splits')
  os.symlink(os.path.join(omniglot_env, 'omniglot', 'images_evaluation.zip'),
             root / 'images_evaluation.zip')
  with pytest.raises(OmniglotError, match=r'missing omniglot/images_background'
                     r'\.zip; expected'):
    omniglot.load_split('vinyals_test', data_dir=str(tmp_path))


def _corrupt_first_png(src, dst):
  """Copies zip `src` to `dst` with bytes of its first PNG's data flipped."""
  shutil.copyfile(src, dst)
  with zipfile.ZipFile(src) as zf:
    info = next(i for i in zf.infolist() if i.filename.endswith('.png'))
  with open(dst, 'r+b') as f:
    f.seek(info.header_offset + 26)
    name_len, extra_len = np.frombuffer(f.read(4), '<u2')
    start = info.header_offset + 30 + int(name_len) + int(extra_len)
    f.seek(start + info.compress_size // 2)
    chunk = bytearray(f.read(8))
    f.seek(start + info.compress_size // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))
  return info.filename


def test_corrupt_zip_names_the_bad_member(tmp_path, omniglot_env):
  root = tmp_path / 'omniglot'
  shutil.copytree(os.path.join(omniglot_env, 'omniglot', 'splits'),
                  root / 'splits')
  os.symlink(os.path.join(omniglot_env, 'omniglot', 'images_evaluation.zip'),
             root / 'images_evaluation.zip')
  bad = _corrupt_first_png(
      os.path.join(omniglot_env, 'omniglot', 'images_background.zip'),
      root / 'images_background.zip')
  with pytest.raises(OmniglotError) as err:
    omniglot.load_split('lake_background', data_dir=str(tmp_path),
                        cache_dir=str(tmp_path / 'cache'))
  text = str(err.value)
  assert f'member {bad!r} is corrupt' in text
  assert 'images_background.zip' in text and '\n' not in text


def test_not_a_zip_is_named(tmp_path, omniglot_env):
  root = tmp_path / 'omniglot'
  shutil.copytree(os.path.join(omniglot_env, 'omniglot', 'splits'),
                  root / 'splits')
  (root / 'images_background.zip').write_bytes(b'not a zip')
  (root / 'images_evaluation.zip').write_bytes(b'not a zip')
  with pytest.raises(OmniglotError, match='images_background.zip: not a '
                     'readable zip file'):
    omniglot.load_split('lake_background', data_dir=str(tmp_path),
                        cache_dir=str(tmp_path / 'cache'))


def test_unknown_split_lists_the_known_ones(omniglot_env):
  with pytest.raises(OmniglotError, match="split='vinyals': must be one of "
                     "'vinyals_train'"):
    omniglot.load_split('vinyals')
