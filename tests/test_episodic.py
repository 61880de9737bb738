"""Episodic N-way K-shot sampler: permuted labels, disjoint sets, seeding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maml_plugin.models import Conv4
from maml_plugin.tasks import EpisodicTasks
from maml_plugin.tasks import episodic
from maml_plugin.tasks.episodic import EpisodeError


def indexed_source(num_classes=12, per_class=(7, 9, 20)):
  """Float images whose pixels hold their own index; uneven class sizes."""
  counts = [per_class[c % len(per_class)] for c in range(num_classes)]
  labels = np.repeat(np.arange(num_classes), counts)
  rng = np.random.default_rng(0)
  perm = rng.permutation(len(labels))  # the sampler must not need sorted input
  labels = labels[perm]
  images = np.broadcast_to(np.arange(len(labels), dtype=np.float32)[
      :, None, None, None], (len(labels), 2, 2, 1)).copy()
  return images, labels


def image_ids(x):
  return np.asarray(x)[..., 0, 0, 0].astype(int)


@pytest.fixture(scope='module')
def synthetic():
  images, labels = indexed_source()
  tasks = EpisodicTasks.from_arrays(images, labels, ways=5, num_support=2,
                                    num_query=4)
  batch = tasks.train_batch(jax.random.key(0), 200)
  return images, labels, tasks, jax.device_get(batch)


def test_shapes_and_dtypes(synthetic):
  _, _, _, batch = synthetic
  assert batch['support']['x'].shape == (200, 10, 2, 2, 1)
  assert batch['query']['x'].shape == (200, 20, 2, 2, 1)
  for part in ('support', 'query'):
    assert batch[part]['x'].dtype == np.float32
    assert batch[part]['y'].dtype == np.int32
    assert batch[part]['class_id'].shape == batch[part]['y'].shape


def test_support_and_query_never_share_an_image(synthetic):
  _, _, _, batch = synthetic
  s, q = image_ids(batch['support']['x']), image_ids(batch['query']['x'])
  for t in range(s.shape[0]):
    ids = np.concatenate([s[t], q[t]])
    assert len(set(ids)) == len(ids)


def test_every_image_belongs_to_its_class_id(synthetic):
  _, labels, _, batch = synthetic
  for part in ('support', 'query'):
    ids = image_ids(batch[part]['x'])
    np.testing.assert_array_equal(labels[ids], batch[part]['class_id'])


def test_labels_are_a_fresh_permutation_per_task(synthetic):
  _, _, _, batch = synthetic
  y, cid = batch['support']['y'], batch['support']['class_id']
  label_to_classes = {k: set() for k in range(5)}
  for t in range(y.shape[0]):
    # 5 distinct classes, labels 0..4, one label per class, same in query.
    mapping = dict(zip(y[t], cid[t]))
    assert sorted(mapping) == list(range(5))
    assert len(set(mapping.values())) == 5
    for yy, cc in zip(batch['query']['y'][t], batch['query']['class_id'][t]):
      assert mapping[yy] == cc
    for k, c in mapping.items():
      label_to_classes[k].add(c)
  # Over many tasks, each label stands for (nearly) every class.
  assert all(len(v) >= 10 for v in label_to_classes.values())


def test_all_classes_and_images_get_drawn(synthetic):
  images, labels, _, batch = synthetic
  drawn = set(image_ids(batch['support']['x']).ravel()) | set(
      image_ids(batch['query']['x']).ravel())
  assert set(np.unique(labels[list(drawn)])) == set(range(12))
  assert len(drawn) > 0.9 * len(images)


def test_same_seed_same_tasks_other_seed_other_tasks(synthetic):
  _, _, tasks, batch = synthetic
  again = tasks.train_batch(jax.random.key(0), 200)
  other = tasks.train_batch(jax.random.key(1), 200)
  jax.tree.map(np.testing.assert_array_equal, batch, jax.device_get(again))
  assert not np.array_equal(batch['support']['x'], other['support']['x'])
  h1 = tasks.held_out(seed=3, num_tasks=10, num_query=3)
  h2 = tasks.held_out(seed=3, num_tasks=10, num_query=3)
  jax.tree.map(np.testing.assert_array_equal, h1, h2)
  assert h1['query']['x'].shape[1] == 15


def test_too_small_source_is_refused_with_one_line():
  images, labels = indexed_source(num_classes=4, per_class=(7,))
  with pytest.raises(EpisodeError, match='ways=5: the source has only 4'):
    EpisodicTasks.from_arrays(images, labels, ways=5, num_support=1,
                              num_query=1)
  with pytest.raises(EpisodeError, match='num_support \\+ num_query = 8'):
    EpisodicTasks.from_arrays(images, labels, ways=2, num_support=1,
                              num_query=7)


def test_real_omniglot_tasks(omniglot_splits):
  split = omniglot_splits['vinyals_test']
  tasks = EpisodicTasks.from_arrays(split.images, split.labels, ways=5,
                                    num_support=1, num_query=15)
  batch = tasks.held_out(seed=0, num_tasks=64, num_query=15)
  x = np.asarray(batch['support']['x'])
  assert x.shape == (64, 5, 28, 28, 1) and 0.0 <= x.min() and x.max() <= 1.0
  # Support and query images differ pixel-wise (no shared image).
  s = np.asarray(batch['support']['x']).reshape(64, 5, -1)
  q = np.asarray(batch['query']['x']).reshape(64, 75, -1)
  same = (s[:, :, None] == q[:, None]).all(-1)
  assert not same.any()
  # With labels permuted per task, an untrained Conv-4 is at chance (1/N).
  graphdef, params = nnx.split(Conv4(5, num_filters=16, rngs=nnx.Rngs(0)),
                               nnx.Param)

  @jax.jit
  def accuracy(params, batch):
    def one(task):
      logits = nnx.merge(graphdef, params)(task['x'])
      return jnp.mean(jnp.argmax(logits, -1) == task['y'])
    return jax.vmap(one)(batch['query'])

  acc = float(accuracy(params, batch).mean())
  assert 0.12 < acc < 0.28, acc


def test_tfds_dataset_without_the_feature_lists_its_features(tmp_path):
  """`arrays_from_tfds` on a dataset whose features are not called `image`
  and `label` says which features it has, in one line; naming them works."""
  tfds = pytest.importorskip('tensorflow_datasets')

  class ShipTestDigits(tfds.core.GeneratorBasedBuilder):
    """Four 2x2 images under other feature names."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              'pixels': tfds.features.Image(shape=(2, 2, 1)),
              'digit': tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i in range(4):
        yield i, {'pixels': np.full((2, 2, 1), i, np.uint8), 'digit': i % 2}

  data_dir = str(tmp_path)
  ShipTestDigits(data_dir=data_dir).download_and_prepare()
  with pytest.raises(EpisodeError) as err:
    episodic.arrays_from_tfds('ship_test_digits', 'train', data_dir=data_dir)
  assert str(err.value) == (
      "TFDS dataset 'ship_test_digits' has no feature image_key='image' and "
      "label_key='label'; its features: digit, pixels")
  images, labels = episodic.arrays_from_tfds(
      'ship_test_digits', 'train', image_key='pixels', label_key='digit',
      data_dir=data_dir)
  assert images.shape == (4, 2, 2, 1)
  assert sorted(labels.tolist()) == [0, 0, 1, 1]


def _turns(task_x, source):
  """Per image of a task ``[n, H, W, 1]``: the k in 0..3 with
  ``np.rot90(source image, k) == image`` (the source image found by its
  marker value), computed with NumPy."""
  out = []
  for image in np.asarray(task_x)[..., 0]:
    image = np.round(image * 255).astype(np.uint8)  # the sampler's x / 255
    original = source[image.max()]
    ks = [k for k in range(4) if np.array_equal(np.rot90(original, k), image)]
    assert len(ks) == 1
    out.append(ks[0])
  return np.array(out)


def test_rotate_classes_turns_each_class_of_a_task_by_one_multiple_of_90():
  """The reference code's augmentation: every image of a class in a task
  (support and query) is the source image rotated by the same k * 90
  degrees, k drawn per class and task from all four; without the option
  nothing is rotated. Caught when broken on purpose: one k per task
  instead of per class, and the rotation applied to support images only."""
  num_classes, per_class, size = 8, 6, 5
  # uint8 images: one bright pixel (its image index) off every symmetry
  # axis, so each rotation puts it somewhere else.
  source = np.zeros((num_classes * per_class, size, size), np.uint8)
  source[:, 0, 1] = np.arange(1, num_classes * per_class + 1)
  images = source
  lookup = np.zeros((num_classes * per_class + 1, size, size), np.uint8)
  lookup[1:] = source
  labels = np.repeat(np.arange(num_classes), per_class)
  kwargs = dict(ways=4, num_support=2, num_query=3)
  tasks = EpisodicTasks.from_arrays(images[..., None], labels,
                                    rotate_classes=True, **kwargs)
  batch = jax.device_get(tasks.train_batch(jax.random.key(3), 60))
  seen, mixed = set(), 0
  for t in range(60):
    sup = _turns(batch['support']['x'][t], lookup)
    qry = _turns(batch['query']['x'][t], lookup)
    per_class = {}
    for part, ks in (('support', sup), ('query', qry)):
      for y, k in zip(batch[part]['y'][t], ks):
        per_class.setdefault(int(y), set()).add(int(k))
    assert all(len(ks) == 1 for ks in per_class.values())
    ks = [next(iter(v)) for v in per_class.values()]
    seen.update(ks)
    mixed += len(set(ks)) > 1
  assert seen == {0, 1, 2, 3}
  assert mixed > 40  # classes of one task turn independently
  plain = EpisodicTasks.from_arrays(images[..., None], labels, **kwargs)
  batch = jax.device_get(plain.train_batch(jax.random.key(3), 10))
  assert not _turns(batch['support']['x'].reshape(-1, size, size, 1),
                    lookup).any()


def test_rotate_classes_of_non_square_images_is_one_line():
  with pytest.raises(EpisodeError) as err:
    EpisodicTasks.from_arrays(np.zeros((20, 4, 6, 1)), np.repeat(np.arange(4),
                              5), ways=2, num_support=1, num_query=1,
                              rotate_classes=True)
  assert str(err.value) == ('rotate_classes=True: images are 4x6; rotating '
                            'by 90 degrees needs square images')
