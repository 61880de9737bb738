"""Real Omniglot files: split sizes, disjointness, rotations, error messages."""

import os
import shutil
import zipfile

import jax
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
    'reference_train': (1100, 1100 * 20),
    'reference_val': (100, 100 * 20),
    'reference_test': (423, 423 * 20),
}
REFERENCE_SPLIT_FILE = os.path.join(os.path.dirname(__file__), '..', 'docs',
                                    'omniglot_reference_split.txt')


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


def test_reference_split_is_disjoint_covers_all_and_ignores_alphabets(
    omniglot_splits):
  """The MAML code's split: 1,100 / 100 / 423 unrotated characters, disjoint,
  all 1,623 together; unlike Vinyals' it is drawn whatever the alphabet,
  so the test characters' alphabets are nearly all in training too (on
  the Vinyals split 4 of 423 test characters are, one alphabet cut in
  two)."""
  train, val, test = (characters(omniglot_splits[f'reference_{s}'])
                      for s in ('train', 'val', 'test'))
  assert (len(train), len(val), len(test)) == (1100, 100, 423)
  assert not (train & val or train & test or val & test)
  assert len(train | val | test) == 1623
  assert all(n.endswith('/rot000')
             for n in omniglot_splits['reference_test'].class_names)
  train_alphabets = {c.split('/')[0] for c in train}
  assert sum(c.split('/')[0] in train_alphabets for c in test) >= 400
  vinyals_train = alphabets(omniglot_splits['vinyals_trainval'])
  assert sum(c.split('/')[0] in vinyals_train for c in characters(
      omniglot_splits['vinyals_test'])) < 10


def test_reference_split_is_the_written_down_one(omniglot_splits):
  """docs/omniglot_reference_split.txt lists every character's part in
  shuffled order; the loaded splits must be exactly those characters."""
  with open(REFERENCE_SPLIT_FILE) as f:
    rows = [line.split() for line in f if not line.startswith('#')]
  for part in ('train', 'val', 'test'):
    written = {name for p, name in rows if p == part}
    assert characters(omniglot_splits[f'reference_{part}']) == written


def test_reference_split_depends_only_on_the_names_and_its_seed():
  """Not on the order the names come in; another seed is another split;
  the wrong number of characters is one line."""
  names = [f'A{a:02d}/character{c:02d}' for a in range(41) for c in range(1, 41)
           ][:1623]
  first = omniglot.reference_characters(names)
  assert omniglot.reference_characters(names[::-1]) == first
  assert omniglot.reference_characters(names, seed=2) != first
  assert {k: len(v) for k, v in first.items()} == {
      'train': 1100, 'val': 100, 'test': 423}
  with pytest.raises(OmniglotError) as err:
    omniglot.reference_characters(names[:1000])
  assert str(err.value) == ('the reference split needs 1623 characters '
                            '(both zips), got 1000')


def test_reference_config_draws_rotated_tasks_of_the_reference_split(
    omniglot_splits):
  """`configs/maml_omniglot.py:reference` as the trainer builds it: the
  held-out tasks are characters of reference_test, each class turned by a
  multiple of 90 degrees (k found with np.rot90 against the unrotated
  split), not always 0, with as many query images as support images."""
  from configs import maml_omniglot  # pylint: disable=g-import-not-at-top
  from maml_plugin.tasks import base  # pylint: disable=g-import-not-at-top
  config = maml_omniglot.get_config('reference')
  problem = base.build_task_problem('omniglot', config)
  tasks = jax.device_get(problem.eval_tasks.held_out(seed=0, num_tasks=20,
                                                     num_query=1))
  test = omniglot_splits['reference_test']
  turns = []
  for t in range(20):
    for x, cid in zip(tasks['query']['x'][t], tasks['query']['class_id'][t]):
      image = np.round(x[..., 0] * 255).astype(np.uint8)
      sources = test.images[test.labels == cid][..., 0]
      ks = {k for k in range(4) for s in sources
            if np.array_equal(np.rot90(s, k), image)}
      assert ks, 'a query image is no rotation of its class'
      turns.append(min(ks))
  assert set(turns) == {0, 1, 2, 3}
  assert config.eval_num_query == config.num_support == 1
