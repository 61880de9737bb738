"""Omniglot: the two official zips, its splits, and the ``'omniglot'`` family.

Usage::

  split = load_split('vinyals_test', data_dir='/data')   # or $MAML_PLUGIN_DATA_DIR
  split.images   # uint8 [num_images, 28, 28, 1], ink = 255, paper = 0
  split.labels   # int32 [num_images], class index into split.class_names
  split.class_names[0]   # 'Gurmukhi/character42/rot000'

`data_dir` is a folder holding ``omniglot/images_background.zip``,
``omniglot/images_evaluation.zip`` and ``omniglot/splits/vinyals/*.txt``
(TFDS's manual-download convention: nothing is ever downloaded).

Images are converted to greyscale ('L') and resized to 28x28 with LANCZOS,
as in the MAML paper's code (Pillow would silently use NEAREST on the 1-bit
originals, so the conversion comes first), then inverted so strokes are
bright. Rotations by 90, 180 and 270 degrees (counter-clockwise, `np.rot90`)
are classes of their own in the Vinyals split.

Splits (`SPLITS`):
  * ``vinyals_train`` / ``vinyals_val`` / ``vinyals_trainval`` /
    ``vinyals_test``: 1,028 / 172 / 1,200 / 423 characters, each in 4
    rotations (4,112 / 688 / 4,800 / 1,692 classes), 20 images per class.
  * ``lake_background`` / ``lake_evaluation``: the 30 / 20 alphabets of the
    two zips (964 / 659 characters, unrotated).
  * ``reference_train`` / ``reference_val`` / ``reference_test``: the split
    of the MAML paper's code (github.com/cbfinn/maml, `data_generator.py`):
    all 1,623 characters of both zips, shuffled by Python's
    ``random.Random(1).shuffle`` regardless of alphabet, the first 1,100
    train, the next 100 validate, the last 423 test (unrotated: that code
    rotates each class of a task by a random multiple of 90 degrees instead,
    ``EpisodicTasks(rotate_classes=True)``). The shuffled list is the
    characters in sorted order (`reference_characters`); the reference code
    shuffled them in its file system's listing order, which is not known,
    so the split is one draw of the same procedure, not the same draw
    (docs/omniglot.md).

Decoding the 32,460 PNGs takes seconds, so the decoded characters are cached
as one ``.npz`` under `cache_dir` (default ``$MAML_PLUGIN_CACHE_DIR`` or
``~/.cache/maml_plugin``), keyed by the zips' sizes and modification times.

From a config (``config.task = 'omniglot'``, `OmniglotFields`): N-way
K-shot episodes of a training and an evaluation split (`EpisodicTasks`),
cross-entropy loss and accuracy, for any classifier model of 28x28x1
images (``config.model = 'conv4'``: MAML's network).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import zipfile

import numpy as np

from maml_plugin import fields
from maml_plugin.tasks import base
from maml_plugin.tasks import episodic

DATA_DIR_ENV = 'MAML_PLUGIN_DATA_DIR'
CACHE_DIR_ENV = 'MAML_PLUGIN_CACHE_DIR'
IMAGE_SIZE = 28
IMAGES_PER_CHARACTER = 20
ZIPS = ('images_background.zip', 'images_evaluation.zip')
VINYALS_SPLITS = ('train', 'val', 'trainval', 'test')
# The MAML reference code's split: its shuffle's seed and the sizes of its
# train / val / test parts (1,200 - 100 train, 100 val, the rest test).
REFERENCE_SEED = 1
REFERENCE_SIZES = {'train': 1100, 'val': 100, 'test': 423}
SPLITS = tuple(f'vinyals_{s}' for s in VINYALS_SPLITS) + (
    'lake_background', 'lake_evaluation') + tuple(
        f'reference_{s}' for s in REFERENCE_SIZES)
ROTATIONS = (0, 90, 180, 270)
_CACHE_VERSION = 1


class OmniglotError(ValueError):
  """The Omniglot files are missing, misplaced or corrupt (one-line message)."""


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """Images of one split with int class labels (any image source fits).

  Attributes:
    images: uint8 ``[num_images, height, width, channels]``.
    labels: int32 ``[num_images]``, indices into `class_names`.
    class_names: one name per class, e.g. ``'Angelic/character01/rot090'``.
  """

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def expected_files(data_dir: str) -> list[str]:
  root = os.path.join(data_dir, 'omniglot')
  return ([os.path.join(root, z) for z in ZIPS] +
          [os.path.join(root, 'splits', 'vinyals', f'{s}.txt')
           for s in VINYALS_SPLITS])


def _layout(data_dir: str) -> str:
  return (f'{data_dir}/omniglot/{{{",".join(ZIPS)}}} and '
          f'{data_dir}/omniglot/splits/vinyals/'
          f'{{{",".join(s + ".txt" for s in VINYALS_SPLITS)}}}')


def resolve_data_dir(data_dir: str | None = None) -> str:
  """`data_dir`, else ``$MAML_PLUGIN_DATA_DIR``; checks the files are there."""
  if not data_dir:
    data_dir = os.environ.get(DATA_DIR_ENV, '')
  if not data_dir:
    raise OmniglotError(
        f'omniglot data_dir is not set: set config.data_dir or ${DATA_DIR_ENV}'
        f' to a folder holding omniglot/{{{",".join(ZIPS)}}} and '
        'omniglot/splits/vinyals/*.txt')
  missing = [f for f in expected_files(data_dir) if not os.path.isfile(f)]
  if missing:
    names = ', '.join(os.path.relpath(f, data_dir) for f in missing)
    raise OmniglotError(
        f'omniglot data_dir={data_dir!r}: missing {names}; expected '
        f'{_layout(data_dir)}')
  return data_dir


def _decode_png(data: bytes) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(data)) as im:
    im = im.convert('L').resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    return 255 - np.asarray(im, np.uint8)


def _read_zip(path: str) -> dict[str, np.ndarray]:
  """``{'Alphabet/characterNN': uint8 [20, 28, 28]}`` from one zip."""
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise OmniglotError(f'{path}: not a readable zip file ({e})') from None
  per_char: dict[str, list[tuple[str, np.ndarray]]] = {}
  with zf:
    for info in zf.infolist():
      name = info.filename
      if info.is_dir() or not name.endswith('.png'):
        continue
      parts = name.split('/')
      if len(parts) != 4:
        raise OmniglotError(
            f'{path}: member {name!r} is not <top>/<Alphabet>/characterNN/'
            '<file>.png')
      try:
        image = _decode_png(zf.read(info))
      except Exception as e:  # pylint: disable=broad-except
        # Bad CRC, bad deflate stream or an undecodable PNG: name the member.
        kind = type(e).__name__
        raise OmniglotError(
            f'{path}: member {name!r} is corrupt ({kind}: {e})') from None
      per_char.setdefault(f'{parts[1]}/{parts[2]}', []).append(
          (parts[3], image))
  out = {}
  for char, items in per_char.items():
    if len(items) != IMAGES_PER_CHARACTER:
      raise OmniglotError(
          f'{path}: {char} has {len(items)} images, expected '
          f'{IMAGES_PER_CHARACTER}')
    out[char] = np.stack([im for _, im in sorted(items)])
  return out


def _default_cache_dir() -> str:
  return os.environ.get(CACHE_DIR_ENV) or os.path.join(
      os.path.expanduser('~'), '.cache', 'maml_plugin')


def _cache_path(data_dir: str, cache_dir: str) -> str:
  key = hashlib.sha256(str(_CACHE_VERSION).encode())
  for z in ZIPS:
    st = os.stat(os.path.join(data_dir, 'omniglot', z))
    key.update(f'{z}:{st.st_size}:{st.st_mtime_ns}'.encode())
  return os.path.join(cache_dir, f'omniglot28_{key.hexdigest()[:16]}.npz')


def load_characters(data_dir: str | None = None, cache_dir: str | None = None
                    ) -> dict[str, tuple[str, np.ndarray]]:
  """Every character: ``{'Alphabet/characterNN': (zip_name, uint8 [20,28,28])}``.

  Reads the cache if present, else decodes the zips and writes the cache.
  """
  data_dir = resolve_data_dir(data_dir)
  cache_dir = cache_dir or _default_cache_dir()
  cache = _cache_path(data_dir, cache_dir)
  if os.path.isfile(cache):
    with np.load(cache) as f:
      names, sources, images = f['names'], f['sources'], f['images']
    return {str(n): (str(s), im) for n, s, im in zip(names, sources, images)}
  chars = {}
  for z in ZIPS:
    for name, images in _read_zip(os.path.join(data_dir, 'omniglot', z)).items():
      chars[name] = (z, images)
  names = sorted(chars)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = f'{cache}.{os.getpid()}.tmp.npz'
  np.savez(tmp, names=np.array(names), sources=np.array(
      [chars[n][0] for n in names]), images=np.stack(
          [chars[n][1] for n in names]))
  os.replace(tmp, cache)
  return chars


def _read_split_file(path: str) -> list[tuple[str, int]]:
  out = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      parts = line.split('/')
      if (len(parts) != 3 or not parts[2].startswith('rot')
          or not parts[2][3:].isdigit() or int(parts[2][3:]) not in ROTATIONS):
        raise OmniglotError(
            f'{path}:{lineno}: {line!r} is not <Alphabet>/characterNN/rotDDD '
            f'with DDD in {ROTATIONS}')
      out.append((f'{parts[0]}/{parts[1]}', int(parts[2][3:])))
  return out


def reference_characters(names, seed: int = REFERENCE_SEED
                         ) -> dict[str, list[str]]:
  """The MAML reference code's split of `names` ('Alphabet/characterNN').

  The names sorted by (alphabet, character), shuffled in place by
  ``random.Random(seed).shuffle`` (Python 3's algorithm: Python 2's
  `random.shuffle` drew other positions from the same seed), then cut into
  `REFERENCE_SIZES` parts in order: ``{'train': [...], 'val': [...],
  'test': [...]}``. The same names and seed give the same split.
  """
  order = sorted(names, key=lambda n: tuple(n.split('/')))
  if len(order) != sum(REFERENCE_SIZES.values()):
    raise OmniglotError(
        f'the reference split needs {sum(REFERENCE_SIZES.values())} '
        f'characters (both zips), got {len(order)}')
  random.Random(seed).shuffle(order)
  parts, start = {}, 0
  for part, size in REFERENCE_SIZES.items():
    parts[part] = order[start:start + size]
    start += size
  return parts


def load_split(split: str, data_dir: str | None = None,
               cache_dir: str | None = None) -> ImageSet:
  """The images and labels of one of `SPLITS` (see module docstring)."""
  if split not in SPLITS:
    raise OmniglotError(
        f'omniglot split={split!r}: must be one of '
        + ', '.join(repr(s) for s in SPLITS))
  data_dir = resolve_data_dir(data_dir)
  chars = load_characters(data_dir, cache_dir)
  if split.startswith('lake_'):
    zip_name = f'images_{split[len("lake_"):]}.zip'
    classes = [(c, 0) for c in sorted(chars) if chars[c][0] == zip_name]
  elif split.startswith('reference_'):
    part = reference_characters(chars)[split[len('reference_'):]]
    classes = [(c, 0) for c in sorted(part)]
  else:
    path = os.path.join(data_dir, 'omniglot', 'splits', 'vinyals',
                        f'{split[len("vinyals_"):]}.txt')
    classes = _read_split_file(path)
    unknown = [c for c, _ in classes if c not in chars]
    if unknown:
      raise OmniglotError(
          f'{path}: character {unknown[0]!r} is in neither zip '
          f'({len(unknown)} unknown)')
  images = np.stack([np.rot90(chars[c][1], k=deg // 90, axes=(1, 2))
                     for c, deg in classes])  # [classes, 20, 28, 28]
  num_classes, per_class = images.shape[:2]
  return ImageSet(
      images=images.reshape(num_classes * per_class, IMAGE_SIZE, IMAGE_SIZE,
                            1),
      labels=np.repeat(np.arange(num_classes, dtype=np.int32), per_class),
      class_names=tuple(f'{c}/rot{deg:03d}' for c, deg in classes))


@dataclasses.dataclass(frozen=True, kw_only=True)
class OmniglotFields(fields.Fields):
  """The Omniglot family's config fields.

  Attributes:
    data_dir: the folder holding ``omniglot/`` ('': $MAML_PLUGIN_DATA_DIR).
    train_split, eval_split: one of `SPLITS` each.
    ways: classes per task (N).
    num_support: images per class in the support set (K).
    num_query: query images per class in training.
    eval_num_query: query images per class in evaluation (the trainer's
      field too): checked against the evaluation split's classes.
    transductive: batch norm normalises with the statistics of the batch it
      sees (the reference code); False: query examples with their task's
      support statistics (`episodic.SupportContextTasks`).
    rotate_classes: rotate each class of every task (training and
      evaluation) by its own random multiple of 90 degrees, as the
      reference code does on its split (`EpisodicTasks`).
  """

  data_dir: str = fields.field(
      '', check=fields.string,
      allowed=f"a folder path, or '' for ${DATA_DIR_ENV}",
      changes_training=False)  # Where the same files are.
  train_split: str = fields.choice(*SPLITS, default='vinyals_train')
  eval_split: str = fields.choice(*SPLITS, default='vinyals_test',
                                  changes_training=False)
  ways: int = fields.integer(at_least=2)
  num_support: int = fields.integer()
  num_query: int = fields.integer()
  eval_num_query: int = fields.integer(changes_training=False)
  transductive: bool = fields.flag(True)
  rotate_classes: bool = fields.flag(False)


def _episodes(task_fields: OmniglotFields, split_field: str,
              query_field: str) -> episodic.EpisodicTasks:
  """Episodes of one split; sizes the split cannot supply name the fields."""
  split = getattr(task_fields, split_field)
  data = load_split(split, data_dir=task_fields.data_dir)
  return episodic.episodes_for_fields(
      data.images, data.labels, task_fields, query_field=query_field,
      source=f'{split_field}={split!r}',
      rotate_classes=task_fields.rotate_classes)


@base.TASKS.register('omniglot', fields=OmniglotFields)
def make_omniglot_problem(task_fields: OmniglotFields) -> base.TaskProblem:
  """N-way K-shot Omniglot: episodic tasks, cross-entropy, accuracy."""
  return episodic.classification_problem(
      _episodes(task_fields, 'train_split', 'num_query'),
      _episodes(task_fields, 'eval_split', 'eval_num_query'),
      transductive=task_fields.transductive)
