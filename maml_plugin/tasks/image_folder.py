"""Few-shot episodes of your own images, one sub-folder per class: the
``'image_folder'`` task family.

From a config alone (`ImageFolderFields`; `configs/maml_image_folder.py`)::

  config.task = 'image_folder'
  config.data_dir = '/data/my_photos'   # my_photos/<class>/<image files>
  config.train_classes = ()             # () : split by the fractions below
  config.eval_classes = ()              # or ('cat', 'dog', ...) each
  config.train_fraction, config.eval_fraction = 0.8, 0.2
  config.split_seed = 0
  config.image_size = 84                # every image resized to 84 x 84
  config.channels = 3                   # 3: RGB; 1: greyscale
  config.ways, config.num_support, config.num_query = 5, 1, 15

Each sub-folder of `data_dir` (hidden ones aside) is a class named as the
folder; its files with an image extension (`IMAGE_EXTENSIONS`, any case)
are its images, other files are left alone. The classes are split either
by name (``train_classes`` and ``eval_classes``, disjoint) or, when both
are empty, by fractions: the sorted class names shuffled with
``split_seed``, the first ``round(train_fraction * n)`` for training and
the next ``round(eval_fraction * n)`` for evaluation (the rest, if the
fractions leave any, for none: a validation set of your own). Images are
converted to RGB or greyscale and resized with LANCZOS to ``image_size``
(non-square ones are stretched); the decoded arrays of each split are
cached as one ``.npz`` under ``$MAML_PLUGIN_CACHE_DIR`` (default
``~/.cache/maml_plugin``), keyed by the files' paths, sizes and
modification times, so only the first run decodes. A value the folder
cannot supply (a class it lacks, more ways than classes) is a one-line
config error naming the field; a file that does not decode names the
file. Loading in Python::

  images, labels, names = load_classes('/data/my_photos', ('cat', 'dog'),
                                       image_size=84)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from maml_plugin import fields
from maml_plugin.tasks import base
from maml_plugin.tasks import episodic
from maml_plugin.tasks import omniglot

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif',
                    '.tiff', '.ppm')
_CACHE_VERSION = 1


def class_names(data_dir: str) -> list[str]:
  """The sorted class folders of `data_dir`; one line if there are none."""
  if not data_dir:
    raise fields.FieldError(
        "data_dir='': must be a folder with one sub-folder of images per "
        'class')
  if not os.path.isdir(data_dir):
    raise fields.FieldError(
        f'data_dir={data_dir!r}: not a folder; must hold one sub-folder of '
        'images per class')
  names = sorted(n for n in os.listdir(data_dir) if not n.startswith('.')
                 and os.path.isdir(os.path.join(data_dir, n)))
  if not names:
    raise fields.FieldError(
        f'data_dir={data_dir!r}: holds no sub-folder; must hold one '
        'sub-folder of images per class')
  return names


def _image_files(data_dir: str, name: str) -> list[str]:
  folder = os.path.join(data_dir, name)
  files = sorted(f for f in os.listdir(folder) if not f.startswith('.')
                 and f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise fields.FieldError(
        f'data_dir={data_dir!r}: class folder {name!r} holds no image '
        f'({", ".join(IMAGE_EXTENSIONS)})')
  return [os.path.join(folder, f) for f in files]


def _decode(path: str, image_size: int, channels: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      im = im.convert('RGB' if channels == 3 else 'L')
      if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), Image.LANCZOS)
      image = np.asarray(im, np.uint8)
  except Exception as e:  # pylint: disable=broad-except
    raise episodic.EpisodeError(f'{path}: not a readable image '
                                f'({type(e).__name__}: {e})') from None
  return image.reshape(image_size, image_size, channels)


def _cache_path(files: list[str], image_size: int, channels: int,
                cache_dir: str) -> str:
  key = hashlib.sha256(f'{_CACHE_VERSION}:{image_size}:{channels}'.encode())
  for path in files:
    st = os.stat(path)
    key.update(f'{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}\n'
               .encode())
  return os.path.join(cache_dir, f'image_folder_{key.hexdigest()[:16]}.npz')


def load_classes(data_dir: str, names, *, image_size: int, channels: int = 3,
                 cache_dir: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """``(images, labels, names)`` of the class folders `names`: uint8
  ``[n, image_size, image_size, channels]``, int32 labels indexing
  `names` (in their order). Reads the cache if present, else decodes and
  writes it."""
  names = tuple(names)
  per_class = [_image_files(data_dir, n) for n in names]
  files = [f for fs in per_class for f in fs]
  cache_dir = cache_dir or os.environ.get(omniglot.CACHE_DIR_ENV) or (
      os.path.join(os.path.expanduser('~'), '.cache', 'maml_plugin'))
  cache = _cache_path(files, image_size, channels, cache_dir)
  labels = np.repeat(np.arange(len(names), dtype=np.int32),
                     [len(fs) for fs in per_class])
  if os.path.isfile(cache):
    with np.load(cache) as f:
      return f['images'], labels, names
  images = np.stack([_decode(f, image_size, channels) for f in files])
  os.makedirs(cache_dir, exist_ok=True)
  tmp = f'{cache}.{os.getpid()}.tmp.npz'
  np.savez(tmp, images=images)
  os.replace(tmp, cache)
  return images, labels, names


def _fraction(v) -> bool:
  return fields.positive_real(v) and v < 1


def _names(v) -> bool:
  return isinstance(v, (tuple, list)) and all(
      isinstance(n, str) and n for n in v)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageFolderFields(fields.Fields):
  """The 'image_folder' family's config fields (see the module docstring).

  Attributes:
    data_dir: the folder of class sub-folders.
    train_classes, eval_classes: class (folder) names of each split; both
      empty: split by the fractions.
    train_fraction, eval_fraction: shares of the classes for training and
      evaluation (sum at most 1), shuffled with `split_seed`.
    split_seed: the seed of that shuffle.
    image_size: images are resized to image_size x image_size.
    channels: 3 (RGB) or 1 (greyscale).
    ways, num_support, num_query, eval_num_query, transductive: as the
      other episodic families (`tfds_episodic.TFDSEpisodicFields`).
  """

  data_dir: str = fields.field(
      '', check=fields.string,
      allowed='a folder with one sub-folder of images per class',
      changes_training=False)  # Where the same files are.
  train_classes: tuple = fields.field(
      (), check=_names, allowed='a tuple of class folder names')
  eval_classes: tuple = fields.field(
      (), check=_names, allowed='a tuple of class folder names')
  train_fraction: float = fields.field(0.8, check=_fraction,
                                       allowed='a number in (0, 1)')
  eval_fraction: float = fields.field(0.2, check=_fraction,
                                      allowed='a number in (0, 1)')
  split_seed: int = fields.integer(0, at_least=0)
  image_size: int = fields.integer(84)
  channels: int = fields.choice(1, 3, default=3)
  ways: int = fields.integer(at_least=2)
  num_support: int = fields.integer()
  num_query: int = fields.integer()
  eval_num_query: int = fields.integer(changes_training=False)
  transductive: bool = fields.flag(True)

  def check(self):
    if bool(self.train_classes) != bool(self.eval_classes):
      empty = 'eval_classes' if self.train_classes else 'train_classes'
      raise fields.FieldError(
          f'{empty}=(): must name classes too when '
          f'{"train_classes" if empty == "eval_classes" else "eval_classes"}'
          ' does (or leave both empty to split by fractions)')
    both = sorted(set(self.train_classes) & set(self.eval_classes))
    if both:
      raise fields.FieldError(
          f'eval_classes={tuple(self.eval_classes)!r}: must not hold '
          f'{both[0]!r}, which train_classes holds')
    if self.train_fraction + self.eval_fraction > 1 + 1e-9:
      raise fields.FieldError(
          f'eval_fraction={self.eval_fraction!r}: must be at most '
          f'1 - train_fraction = {1 - self.train_fraction:g}')


def split_classes(task_fields: ImageFolderFields
                  ) -> tuple[list[str], list[str]]:
  """The training and the evaluation class names (module docstring)."""
  names = class_names(task_fields.data_dir)
  if task_fields.train_classes:
    for field in ('train_classes', 'eval_classes'):
      unknown = [n for n in getattr(task_fields, field) if n not in names]
      if unknown:
        raise fields.FieldError(
            f'{field}: {unknown[0]!r} is not a class folder of '
            f'data_dir={task_fields.data_dir!r}; its classes: '
            f'{", ".join(names)}')
    return list(task_fields.train_classes), list(task_fields.eval_classes)
  order = np.random.default_rng(task_fields.split_seed).permutation(len(names))
  shuffled = [names[i] for i in order]
  num_train = round(task_fields.train_fraction * len(names))
  num_eval = round(task_fields.eval_fraction * len(names))
  if not num_train or not num_eval or num_train + num_eval > len(names):
    raise fields.FieldError(
        f'train_fraction={task_fields.train_fraction!r}, eval_fraction='
        f'{task_fields.eval_fraction!r}: give {num_train} and {num_eval} of '
        f'the {len(names)} classes of data_dir={task_fields.data_dir!r}; '
        'each split needs at least one')
  return shuffled[:num_train], shuffled[num_train:num_train + num_eval]


def _episodes(task_fields: ImageFolderFields, names: list[str], split: str,
              query_field: str) -> episodic.EpisodicTasks:
  images, labels, _ = load_classes(task_fields.data_dir, names,
                                   image_size=task_fields.image_size,
                                   channels=task_fields.channels)
  return episodic.episodes_for_fields(
      images, labels, task_fields, query_field=query_field,
      source=f'the {split} split of {task_fields.data_dir!r}')


@base.TASKS.register('image_folder', fields=ImageFolderFields)
def make_image_folder_problem(task_fields: ImageFolderFields
                              ) -> base.TaskProblem:
  """N-way K-shot episodes of a folder of class folders."""
  train_names, eval_names = split_classes(task_fields)
  return episodic.classification_problem(
      _episodes(task_fields, train_names, 'training', 'num_query'),
      _episodes(task_fields, eval_names, 'evaluation', 'eval_num_query'),
      transductive=task_fields.transductive)
