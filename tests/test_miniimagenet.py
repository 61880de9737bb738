"""mini-ImageNet from a user's files: the two layouts, the builder, the
one-line errors, and configs/maml_miniimagenet.py:quick end to end.

The tests write both real layouts from the same images: ``{train,val,
test}.csv`` (header ``filename,label``, wnid labels) with ``images/``, and
``mini-imagenet-cache-{split}.pkl`` (a dict of ``image_data`` uint8
``[N, 84, 84, 3]`` and ``class_dict`` ``{wnid: [indices]}``, rows shuffled
so the indices matter). 12 classes (5 / 2 / 5) of 4 images; every pixel
of class g is ``20 * g`` plus noise below 8, so an image tells its class.
Most images are 84x84 RGB PNGs; one class is JPEGs of 100x90 (resized by
the builder) and one image is greyscale (converted to RGB).
"""

import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

import maml_plugin.tasks  # pylint: disable=g-bad-import-order,unused-import
from configs import maml_miniimagenet
from maml_plugin import config_validation
from maml_plugin import tasks
from maml_plugin.tasks import miniimagenet
from maml_plugin.tasks.miniimagenet import MiniImageNetError
from tests import without_tensorflow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_CLASS = 4
SPLIT_CLASSES = {'train': range(0, 5), 'val': range(5, 7),
                 'test': range(7, 12)}
# Not sorted as the classes are numbered: labels must follow the wnids.
WNIDS = ['n0%07d' % (9_000_000 - 37 * g) for g in range(12)]
JPEG_CLASS, GREY_IMAGE = 3, (8, 1)


def _expected_image(path):
  """What the builder should store for the file at `path` (PIL, here)."""
  with Image.open(path) as im:
    im = im.convert('RGB')
    if im.size != (84, 84):
      im = im.resize((84, 84), Image.LANCZOS)
    return np.asarray(im)


def _write_files(root, rng):
  """Both layouts in `root`; returns {split: (images, wnids)} expected."""
  os.makedirs(os.path.join(root, 'images'))
  expected = {}
  for split, classes in SPLIT_CLASSES.items():
    rows, images, wnids = ['filename,label'], [], []
    for g in classes:
      for i in range(PER_CLASS):
        jpeg = g == JPEG_CLASS
        shape = (90, 100, 3) if jpeg else (84, 84, 3)
        pixels = (20 * g + rng.integers(0, 8, shape)).astype(np.uint8)
        im = Image.fromarray(pixels)
        if (g, i) == GREY_IMAGE:
          im = im.convert('L')
        name = f'{WNIDS[g]}{i + 1:08d}.' + ('jpg' if jpeg else 'png')
        path = os.path.join(root, 'images', name)
        im.save(path, quality=95) if jpeg else im.save(path)
        rows.append(f'{name},{WNIDS[g]}')
        images.append(_expected_image(path))
        wnids.append(WNIDS[g])
    with open(os.path.join(root, f'{split}.csv'), 'w') as f:
      f.write('\n'.join(rows) + '\n')
    # The cache: rows shuffled, class_dict pointing at them.
    order = rng.permutation(len(images))  # row r holds image order[r]
    class_dict = {}
    for row, k in enumerate(order):
      class_dict.setdefault(wnids[k], []).append(row)
    class_dict = {w: sorted(v, key=lambda r: order[r])
                  for w, v in class_dict.items()}
    with open(os.path.join(root, miniimagenet.PICKLE_NAME.format(
        split=split)), 'wb') as f:
      pickle.dump({'image_data': np.stack(images)[order],
                   'class_dict': class_dict}, f)
    expected[split] = (np.stack(images), wnids)
  return expected


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('mini_imagenet'))
  return root, _write_files(root, np.random.default_rng(0))


@pytest.fixture(scope='module')
def built(files, tmp_path_factory):
  """{layout: data_dir} of the dataset built from each layout."""
  root, _ = files
  out = {}
  for layout in miniimagenet.LAYOUTS:
    data_dir = str(tmp_path_factory.mktemp(f'tfds_{layout}'))
    tfds.builder(f'mini_imagenet_tasks/{layout}', data_dir=data_dir
                 ).download_and_prepare(
                     file_format='array_record',
                     download_config=tfds.download.DownloadConfig(
                         manual_dir=root))
    out[layout] = data_dir
  return out


def _read(layout, data_dir, split):
  builder = tfds.builder(f'mini_imagenet_tasks/{layout}', data_dir=data_dir)
  source = builder.as_data_source(split=split)
  examples = [source[i] for i in range(len(source))]
  names = builder.info.features['label'].names
  return (np.stack([e['image'] for e in examples]),
          [names[e['label']] for e in examples], builder.info)


@pytest.mark.parametrize('layout', miniimagenet.LAYOUTS)
def test_builder_splits_shapes_labels_and_checksums(files, built, layout):
  """Each split holds its own classes' images, 84x84 RGB, labelled by the
  wnid of the class they were made from (pins a swapped split, labels
  that do not follow the images, a wrong pickle index mapping), and the
  metadata holds the SHA-256 of every file read, computed here."""
  root, expected = files
  for split, classes in SPLIT_CLASSES.items():
    images, wnids, info = _read(layout, built[layout], split)
    assert images.shape == (len(classes) * PER_CLASS, 84, 84, 3)
    assert images.dtype == np.uint8
    assert info.splits[split].num_examples == len(images)
    # The class an image was made from (its mean pixel) is its label's.
    made_from = np.floor(images.mean(axis=(1, 2, 3)) / 20).astype(int)
    assert [WNIDS[g] for g in made_from] == wnids
    assert sorted(set(wnids)) == sorted(WNIDS[g] for g in classes)
    # Images are exactly what PIL gives for the files (lossless PNGs).
    want, want_wnids = expected[split]
    key = lambda x: (x[1], x[0].tobytes())  # pylint: disable=unnecessary-lambda-assignment
    got = sorted(zip(images, wnids), key=key)
    for (a, wa), (b, wb) in zip(got, sorted(zip(want, want_wnids), key=key)):
      assert wa == wb
      np.testing.assert_array_equal(a, b)
  assert info.features['label'].names == (
      [WNIDS[g] for s in SPLIT_CLASSES.values() for g in sorted(
          s, key=lambda g: WNIDS[g])])
  metadata = info.metadata
  assert metadata['layout'] == layout
  assert metadata['classes'] == {'train': 5, 'val': 2, 'test': 5}
  sha = lambda p: hashlib.sha256(open(os.path.join(root, p), 'rb').read()  # pylint: disable=unnecessary-lambda-assignment
                                 ).hexdigest()
  if layout == 'pickle':
    want = {miniimagenet.PICKLE_NAME.format(split=s): sha(
        miniimagenet.PICKLE_NAME.format(split=s)) for s in SPLIT_CLASSES}
  else:
    want = {}
    for s in SPLIT_CLASSES:
      want[f'{s}.csv'] = sha(f'{s}.csv')
      names = [line.split(',')[0] for line in
               open(os.path.join(root, f'{s}.csv')).read().split()[1:]]
      want[f'images of {s}.csv'] = hashlib.sha256(''.join(
          f'{sha("images/" + n)}  images/{n}\n' for n in names).encode()
                                                  ).hexdigest()
  assert dict(metadata['sha256']) == want


def test_both_layouts_of_the_same_images_give_the_same_dataset(built):
  for split in SPLIT_CLASSES:
    csv_images, csv_wnids, _ = _read('csv', built['csv'], split)
    pkl_images, pkl_wnids, _ = _read('pickle', built['pickle'], split)
    assert csv_wnids == pkl_wnids
    np.testing.assert_array_equal(csv_images, pkl_images)


def _copy_layout(src, dst, layout):
  os.makedirs(dst, exist_ok=True)
  for path in miniimagenet.expected_files(layout):
    os.symlink(os.path.join(src, path.rstrip('/')),
               os.path.join(dst, path.rstrip('/')))


def test_missing_manual_dir_through_tfds_is_one_line(tmp_path):
  """No manual_dir given (TFDS then looks in data_dir/downloads/manual) and
  an empty one: one line naming the folder and the files looked for, not
  TFDS's multi-line instructions."""
  data_dir = str(tmp_path / 'tfds')
  for manual_dir in (None, str(tmp_path)):
    builder = tfds.builder('mini_imagenet_tasks/csv', data_dir=data_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    with pytest.raises(MiniImageNetError) as err:
      builder.download_and_prepare(download_config=config,
                                   file_format='array_record')
    text = str(err.value)
    assert '\n' not in text
    assert '{train,val,test}.csv and images/' in text, text
    where = manual_dir or os.path.join(data_dir, 'downloads', 'manual')
    assert repr(where) in text, text


@pytest.mark.parametrize('layout,setup,message', [
    ('csv', 'pickles_only',
     "mini-ImageNet manual_dir={d!r}: missing train.csv, val.csv, test.csv, "
     "images/; expected {{train,val,test}}.csv and images/ (the Ravi & "
     "Larochelle split); it holds the 'pickle' layout: use "
     'mini_imagenet_tasks/pickle'),
    ('pickle', 'no_test_pickle',
     "mini-ImageNet manual_dir={d!r}: missing mini-imagenet-cache-test.pkl; "
     'expected mini-imagenet-cache-{{train,val,test}}.pkl (the pickled '
     'caches)'),
    ('csv', 'bad_header',
     "{d}/val.csv: first line 'file,wnid' is not the header "
     "'filename,label'"),
    ('csv', 'missing_image',
     "{d}/test.csv: lists 'n0000000000000001.png', but "
     '{d}/images/n0000000000000001.png cannot be read (No such file or '
     'directory)'),
    ('csv', 'class_in_two_splits',
     "mini-ImageNet manual_dir={d!r}: class '" + WNIDS[0] + "' is in both "
     "'train' and 'test'; the splits must hold different classes"),
    ('pickle', 'wrong_keys',
     "{d}/mini-imagenet-cache-val.pkl: holds ['images', 'labels'], not a "
     "dict with 'image_data' and 'class_dict'"),
    ('pickle', 'code_in_pickle',
     '{d}/mini-imagenet-cache-val.pkl: not a readable pickle '
     '(UnpicklingError: refers to posix.system, which a mini-ImageNet cache '
     'does not hold; not loaded (a pickle can run code))'),
    ('pickle', 'index_out_of_range',
     "{d}/mini-imagenet-cache-val.pkl: 'class_dict' indices must lie in "
     "[0, 8), the rows of 'image_data'"),
])
def test_a_wrong_manual_dir_is_one_line_naming_what_and_where(
    files, tmp_path, layout, setup, message):
  root, _ = files
  d = str(tmp_path / 'manual')
  val_pickle = os.path.join(d, miniimagenet.PICKLE_NAME.format(split='val'))
  if setup in ('pickles_only', 'no_test_pickle', 'wrong_keys',
               'code_in_pickle', 'index_out_of_range'):
    _copy_layout(root, d, 'pickle')
    if setup == 'no_test_pickle':
      os.remove(os.path.join(d, miniimagenet.PICKLE_NAME.format(split='test')))
  else:
    _copy_layout(root, d, 'csv')
  if setup in ('wrong_keys', 'code_in_pickle', 'index_out_of_range'):
    os.remove(val_pickle)
    with open(val_pickle, 'wb') as f:
      if setup == 'code_in_pickle':
        f.write(b'cposix\nsystem\n(S"true"\ntR.')  # os.system('true')
      elif setup == 'wrong_keys':
        pickle.dump({'images': 0, 'labels': 0}, f)
      else:
        pickle.dump({'image_data': np.zeros((8, 84, 84, 3), np.uint8),
                     'class_dict': {WNIDS[5]: [0, 1, 2, 3],
                                    WNIDS[6]: [4, 5, 6, 8]}}, f)
  if setup == 'bad_header':
    os.remove(os.path.join(d, 'val.csv'))
    with open(os.path.join(d, 'val.csv'), 'w') as f:
      f.write('file,wnid\n')
  if setup in ('missing_image', 'class_in_two_splits'):
    os.remove(os.path.join(d, 'test.csv'))
    with open(os.path.join(d, 'test.csv'), 'w') as f:
      if setup == 'missing_image':
        f.write('filename,label\nn0000000000000001.png,n00000000\n')
      else:
        f.write(f'filename,label\n{WNIDS[0]}00000001.png,{WNIDS[0]}\n')
  with pytest.raises(MiniImageNetError) as err:
    miniimagenet.load_splits(d, layout)
  assert str(err.value) == message.format(d=d)


def test_every_variant_is_valid():
  for arg in (None, 'quick', '5w5s', 'fomaml', 'mamlpp', '5w5s,fomaml'):
    config_validation.validate(maml_miniimagenet.get_config(arg))
  one, five = (maml_miniimagenet.get_config(a) for a in (None, '5w5s'))
  # The MAML paper's protocol (sec. 5.2 and its appendix).
  assert (one.meta_batch_size, five.meta_batch_size) == (4, 2)
  assert (one.num_support, five.num_support) == (1, 5)
  assert (one.inner_lr, one.num_inner_steps, one.eval_num_inner_steps) == (
      0.01, 5, 10)
  assert (one.num_query, one.num_filters, one.conv_downsample) == (
      15, 32, 'maxpool')
  assert one.num_train_steps == 60_000 and one.transductive


def test_the_config_reads_the_built_dataset_at_its_image_size(built):
  """configs/maml_miniimagenet.py:quick through `tfds_episodic`: the 84x84
  images resized to its 28x28, still telling their class (pins a resize
  that scrambles or drops images, and training on the test classes)."""
  config = maml_miniimagenet.get_config('quick')
  config.data_dir = built['csv']
  problem = tasks.build_task_problem(config.task, config)
  assert problem.input_shape == (28, 28, 3)
  for source, split in ((problem.tasks, 'train'), (problem.eval_tasks, 'test')):
    images = np.asarray(source.images)
    assert images.shape == (len(SPLIT_CLASSES[split]) * PER_CLASS, 28, 28, 3)
    made_from = set(np.floor(images.mean(axis=(1, 2, 3)) / 20).astype(int))
    assert made_from == set(SPLIT_CLASSES[split])


def test_main_and_evaluate_run_the_quick_config_without_tensorflow(
    built, tmp_path):
  """configs/maml_miniimagenet.py:quick trained and evaluated by the two
  commands on the dataset built from the CSV layout, where TensorFlow is
  not installed (the default install), with nothing on stderr. XLA
  optimizes less (LLVM level 0): the same program, compiled in half the
  time, for a suite that runs it only to see it run."""
  env = without_tensorflow.environment(tmp_path / 'site')
  env['XLA_FLAGS'] = '--xla_backend_optimization_level=0'
  workdir = str(tmp_path / 'work')
  for command in ('main', 'evaluate'):
    proc = subprocess.run(
        [sys.executable, '-m', f'maml_plugin.{command}',
         '--config=configs/maml_miniimagenet.py:quick', f'--workdir={workdir}',
         f'--config.data_dir={built["csv"]}'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == '', proc.stderr[-3000:]
  with open(os.path.join(workdir, 'evaluation.json')) as f:
    report = json.load(f)
  assert report['metric'] == 'accuracy' and report['train_step'] == 20
  assert report['num_tasks'] == 10
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['20']
