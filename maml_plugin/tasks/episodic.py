"""N-way K-shot classification tasks gathered from one in-memory image array.

Usage::

  split = omniglot.load_split('vinyals_train')          # or from_tfds(...)
  tasks = EpisodicTasks.from_arrays(split.images, split.labels, ways=5,
                                    num_support=1, num_query=15)
  meta_batch = tasks.train_batch(rng, num_tasks=32)     # jittable
  eval_tasks = tasks.held_out(seed=0, num_tasks=600, num_query=15)

A meta-batch (the form `maml_plugin.checks` checks) has a leading task axis::

  {'support': {'x': float32 [T, ways * num_support, H, W, C],
               'y': int32 [T, ways * num_support],         # 0..ways-1
               'class_id': int32 [T, ways * num_support]},  # source class
   'query':   {... ways * num_query ...}}

Each task draws `ways` distinct classes; their order is random, so the
labels 0..ways-1 are a fresh permutation of the chosen classes in every
task. Per class, `num_support + num_query` distinct images are drawn, the
first for the support set and the rest for the query set, so the two never
share an image. With ``rotate_classes=True`` (the MAML reference code on
Omniglot) each class of a task is rotated by its own random multiple of 90
degrees (counter-clockwise, `jnp.rot90`), all its support and query images
alike, so a character is a new class in each orientation. Sampling is pure `jax.random` over arrays kept on device,
so it runs inside a jitted train step (`train.make_train_chunk`); the same
key gives the same tasks. Classes may hold different numbers of images.

For a task family of classification episodes (`omniglot.py`): the loss
and metric on a merged model (`cross_entropy`, `accuracy`), and
`SupportContextTasks` for batch norm that normalises query examples with
their task's support statistics.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from maml_plugin import fields
from maml_plugin import losses
from maml_plugin import tf_optional
from maml_plugin.tasks import base

# Training tasks come from `fold_in(key, _TRAIN_STREAM)`, held-out ones from
# `fold_in(key(seed), _HELD_OUT_STREAM)`.
_TRAIN_STREAM = 0
_HELD_OUT_STREAM = 1


class EpisodeError(ValueError):
  """The source cannot supply the requested tasks (one-line message)."""


@dataclasses.dataclass(frozen=True, eq=False)
class EpisodicTasks:
  """Sampler of N-way K-shot meta-batches (build with `from_arrays`).

  Attributes:
    images: ``[num_images, H, W, C]`` (uint8 scaled by 1/255, or float),
      sorted by class, on device.
    class_start: int32 ``[num_classes]``, index of each class's first image.
    class_count: int32 ``[num_classes]``, images per class.
    ways: classes per task (N).
    num_support: support images per class (K).
    num_query: query images per class for training tasks.
    max_count: the largest class's number of images.
    rotate_classes: rotate each class of a task by a random multiple of 90
      degrees (square images only).
  """

  images: jax.Array
  class_start: jax.Array
  class_count: jax.Array
  ways: int
  num_support: int
  num_query: int
  max_count: int
  rotate_classes: bool = False

  @classmethod
  def from_arrays(cls, images, labels, *, ways: int, num_support: int,
                  num_query: int, rotate_classes: bool = False
                  ) -> 'EpisodicTasks':
    """From images ``[n, H, W(, C)]`` and int labels ``[n]`` (any classes)."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or labels.shape != images.shape[:1]:
      raise EpisodeError(
          f'images shape {images.shape} and labels shape {labels.shape}: '
          'need [n, H, W(, C)] and [n]')
    if rotate_classes and images.shape[1] != images.shape[2]:
      raise EpisodeError(
          f'rotate_classes=True: images are {images.shape[1]}x'
          f'{images.shape[2]}; rotating by 90 degrees needs square images')
    order = np.argsort(labels, kind='stable')
    classes, start, count = np.unique(labels[order], return_index=True,
                                      return_counts=True)
    need = num_support + num_query
    if ways > len(classes):
      raise EpisodeError(f'ways={ways}: the source has only {len(classes)} '
                         'classes')
    if count.min() < need:
      raise EpisodeError(
          f'num_support + num_query = {need}: class {classes[count.argmin()]} '
          f'has only {count.min()} images')
    return cls(images=jnp.asarray(images[order]),
               class_start=jnp.asarray(start, jnp.int32),
               class_count=jnp.asarray(count, jnp.int32),
               ways=ways, num_support=num_support, num_query=num_query,
               max_count=int(count.max()), rotate_classes=rotate_classes)

  @property
  def num_classes(self) -> int:
    return int(self.class_start.shape[0])

  def _one_task(self, rng: jax.Array, num_query: int):
    k_class, k_image = jax.random.split(rng)
    classes = jax.random.choice(k_class, self.num_classes, (self.ways,),
                                replace=False)
    need = self.num_support + num_query
    max_count = self.max_count
    # Random distinct images per class: sort random keys, slots past the
    # class's size last.
    keys = jax.random.uniform(k_image, (self.ways, max_count))
    slot = jnp.arange(max_count)
    keys = jnp.where(slot[None] < self.class_count[classes][:, None], keys,
                     2.0)
    picks = jnp.argsort(keys, axis=1)[:, :need]  # [ways, need]
    index = self.class_start[classes][:, None] + picks
    x = self.images[index]  # [ways, need, H, W, C]
    if self.rotate_classes:
      # Its own key (not a third split of `rng`): tasks without rotation
      # stay the ones they were.
      turns = jax.random.randint(jax.random.fold_in(rng, 1), (self.ways,),
                                 0, 4)
      rotated = jnp.stack([jnp.rot90(x, k, axes=(2, 3)) for k in range(4)])
      x = rotated[turns, jnp.arange(self.ways)]
    if jnp.issubdtype(x.dtype, jnp.integer):
      x = x.astype(jnp.float32) / 255.0
    else:
      x = x.astype(jnp.float32)
    y = jnp.broadcast_to(jnp.arange(self.ways, dtype=jnp.int32)[:, None],
                         (self.ways, need))
    cid = jnp.broadcast_to(classes.astype(jnp.int32)[:, None],
                           (self.ways, need))

    def part(a, lo, hi):
      a = a[:, lo:hi]
      return a.reshape((self.ways * (hi - lo),) + a.shape[2:])

    k = self.num_support
    return {
        'support': {'x': part(x, 0, k), 'y': part(y, 0, k),
                    'class_id': part(cid, 0, k)},
        'query': {'x': part(x, k, need), 'y': part(y, k, need),
                  'class_id': part(cid, k, need)},
    }

  def sample(self, rng: jax.Array, num_tasks: int, *,
             num_query: int | None = None) -> dict:
    """`num_tasks` tasks from `rng` (jittable; see module docstring)."""
    num_query = self.num_query if num_query is None else num_query
    return _sample(self, rng, num_tasks, num_query)

  def train_batch(self, rng: jax.Array, num_tasks: int) -> dict:
    """Training meta-batch for the key of one step (training stream)."""
    return self.sample(jax.random.fold_in(rng, _TRAIN_STREAM), num_tasks)

  def held_out(self, seed: int, num_tasks: int = 600,
               num_query: int = 15) -> dict:
    """A fixed, seeded set of evaluation tasks, disjoint from training keys."""
    rng = jax.random.fold_in(jax.random.key(seed), _HELD_OUT_STREAM)
    return self.sample(rng, num_tasks, num_query=num_query)


# The sampler is static (hashed by identity): one compilation per sampler and
# shape, also when called outside a jitted step.
@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _sample(tasks: EpisodicTasks, rng: jax.Array, num_tasks: int,
            num_query: int) -> dict:
  return jax.vmap(lambda k: tasks._one_task(k, num_query))(  # pylint: disable=protected-access
      jax.random.split(rng, num_tasks))


def logits(model, batch) -> jax.Array:
  """`model`'s logits for ``batch['x']``; a batch that carries its task's
  support images as ``'context'`` (`SupportContextTasks`) passes them on
  (``model(x, context=...)``, as `models.Conv4` takes them)."""
  if 'context' in batch:
    return model(batch['x'], context=batch['context'])
  return model(batch['x'])


def cross_entropy(model, batch) -> jax.Array:
  """The classification task loss on a merged model."""
  return losses.softmax_cross_entropy(logits(model, batch), batch['y'])


def accuracy(model, batch) -> jax.Array:
  """The fraction of ``batch`` that `model` classifies right."""
  return losses.accuracy(logits(model, batch), batch['y'])


@dataclasses.dataclass(frozen=True)
class SupportContextTasks:
  """Task source whose query sets carry their support images as 'context'.

  For non-transductive batch norm: a model that takes ``context``
  (`models.Conv4`) then normalises the query examples with the support
  set's statistics, so they never see each other.
  """

  tasks: Any

  @staticmethod
  def _add(batch):
    return dict(batch, query=dict(batch['query'],
                                  context=batch['support']['x']))

  def train_batch(self, rng, num_tasks):
    return self._add(self.tasks.train_batch(rng, num_tasks))

  def held_out(self, *args, **kwargs):
    return self._add(self.tasks.held_out(*args, **kwargs))


def episodes_for_fields(images, labels, task_fields, *, query_field: str,
                        source: str, rotate_classes: bool = False
                        ) -> EpisodicTasks:
  """`EpisodicTasks` sized by a task family's fields (``ways``,
  ``num_support`` and the query count `query_field`); a size the data
  cannot supply is a `fields.FieldError` naming the field and `source`."""
  _, per_class = np.unique(np.asarray(labels), return_counts=True)
  ways = task_fields.ways
  num_query = getattr(task_fields, query_field)
  if ways > len(per_class):
    raise fields.FieldError(f'ways={ways}: must be at most {len(per_class)}, '
                            f'the classes of {source}')
  need = task_fields.num_support + num_query
  if need > per_class.min():
    raise fields.FieldError(
        f'num_support + {query_field} = {need}: must be at most '
        f'{per_class.min()}, the images per class of {source}')
  return EpisodicTasks.from_arrays(images, labels, ways=ways,
                                   num_support=task_fields.num_support,
                                   num_query=num_query,
                                   rotate_classes=rotate_classes)


def classification_problem(tasks: EpisodicTasks, eval_tasks: EpisodicTasks,
                           *, transductive: bool = True) -> base.TaskProblem:
  """The `base.TaskProblem` of a family of classification episodes:
  cross-entropy loss, accuracy, inputs shaped as the images; with
  ``transductive=False`` query sets carry their support images
  (`SupportContextTasks`)."""
  input_shape = tuple(tasks.images.shape[1:])
  eval_ways = eval_tasks.ways
  if not transductive:
    tasks, eval_tasks = (SupportContextTasks(tasks),
                         SupportContextTasks(eval_tasks))
  return base.TaskProblem(
      tasks=tasks, eval_tasks=eval_tasks, input_shape=input_shape,
      num_outputs=eval_ways, loss=cross_entropy, metric='accuracy',
      metric_fn=accuracy)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 images ``[n, H, W, C]`` (C = 1 or 3) resized to ``[n, size,
  size, C]`` with LANCZOS (PIL); images of that size already are returned
  as they are. Non-square images are stretched to the square."""
  images = np.asarray(images)
  if images.shape[1:3] == (size, size):
    return images
  out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
  for i, image in enumerate(images):
    pil = PIL.Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    out[i] = np.asarray(pil.resize((size, size), PIL.Image.LANCZOS),
                        np.uint8).reshape(size, size, -1)
  return out


def _split_names(split: str) -> list[str]:
  """The split names in a TFDS split string: 'train[:80%]+test' ->
  ['train', 'test']."""
  return [part.split('[', 1)[0].strip() for part in split.split('+')]


def _decode_png_or_jpeg(encoded: bytes) -> np.ndarray:
  image = np.asarray(PIL.Image.open(io.BytesIO(encoded)))
  return image[..., None] if image.ndim == 2 else image


def _arrays_from_data_source(builder, split: str, image_key: str,
                             label_key: str) -> tuple[np.ndarray, np.ndarray]:
  """`arrays_from_tfds` from ``array_record`` files, without TensorFlow.
  Images are decoded here with PIL (TFDS would too, after a warning that
  OpenCV is not installed)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  encoded = isinstance(builder.info.features[image_key], tfds.features.Image)
  decoders = {image_key: tfds.decode.SkipDecoding()} if encoded else None
  source = builder.as_data_source(split=split, decoders=decoders)
  examples = source.__getitems__(list(range(len(source))))
  images = [e[image_key] for e in examples]
  if encoded:
    images = [_decode_png_or_jpeg(image) for image in images]
  return np.stack(images), np.asarray([e[label_key] for e in examples])


def arrays_from_tfds(name: str, split: str, *, image_key: str = 'image',
                     label_key: str = 'label', data_dir: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
  """``(images, labels)`` of a prepared TFDS image-classification split.

  Works with any dataset that has an image and an int label feature
  (``'omniglot'``, ``'mnist'``, ``'omniglot_tasks/...'``, your own, also
  one whose builder code is not installed: TFDS reads it from its files).
  `split` is a TFDS split string (``'train'``, ``'train[:80%]'``). The
  dataset must already be prepared under `data_dir` (None: TFDS's default,
  ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``): nothing downloads. A
  dataset that is not there, a split it lacks, or a missing `image_key` or
  `label_key` is an `EpisodeError` in one line that names the data_dir,
  the splits or the features it has.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  where = f'data_dir={data_dir or tfds.core.constants.DATA_DIR!r}'
  prepare = (f'prepare it first (e.g. tfds build {name.split("/")[0]} '
             f'--data_dir=DIR); nothing is downloaded at run time')
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise EpisodeError(f'TFDS dataset {name!r} is not prepared under {where} '
                       f'and no builder of that name is installed; '
                       f'{prepare}') from None
  if not builder.is_prepared():
    raise EpisodeError(f'TFDS dataset {name!r} is not prepared under '
                       f'{where}; {prepare}')
  splits = sorted(builder.info.splits.keys())
  unknown = [s for s in _split_names(split) if s not in splits]
  if unknown:
    raise EpisodeError(f'TFDS dataset {name!r} under {where} has no split '
                       f'{unknown[0]!r}; its splits: {", ".join(splits)}')
  features = sorted(builder.info.features.keys())
  missing = [f'{arg}={key!r}' for arg, key in (('image_key', image_key),
                                               ('label_key', label_key))
             if key not in features]
  if missing:
    raise EpisodeError(
        f'TFDS dataset {name!r} has no feature {" and ".join(missing)}; '
        f'its features: {", ".join(features)}')
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    # Random access, no TensorFlow needed (the default install).
    return _arrays_from_data_source(builder, split, image_key, label_key)
  if not tf_optional.installed():
    raise EpisodeError(
        f'TFDS dataset {name!r} under {where} is stored as '
        f'{builder.info.file_format.value} files, which need TensorFlow to '
        f"read: {tf_optional.INSTALL_HINT}, or prepare it with "
        "file_format='array_record' (tfds build --file_format=array_record)")
  ds = builder.as_dataset(split=split, batch_size=-1)
  data = tfds.as_numpy(ds)
  return np.asarray(data[image_key]), np.asarray(data[label_key])
