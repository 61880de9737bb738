"""mini-ImageNet from the files you have, in either layout it is shared in.

Usage::

  split = load_split('/data/mini-imagenet', 'csv', 'train')
  split.images       # uint8 [38400, 84, 84, 3] for the real files
  split.labels       # int32 [38400], index into split.class_names
  split.class_names  # ('n01532829', ...): ImageNet wnids, sorted
  split.sha256       # {'train.csv': '...', 'images of train.csv': '...'}

`manual_dir` holds one of the two `LAYOUTS` (nothing is ever downloaded):

* ``'csv'``: the split of Ravi & Larochelle (2017): ``train.csv``,
  ``val.csv`` and ``test.csv`` (a header ``filename,label``, then one row
  per image: its file name in ``images/`` and its ImageNet class id, the
  wnid), and the ``images/`` folder. Images of another size are converted
  to RGB and resized to 84x84 with LANCZOS, as the MAML paper's
  ``proc_images.py`` does; 84x84 RGB files are kept as they are.
* ``'pickle'``: the pickled caches commonly shared,
  ``mini-imagenet-cache-{train,val,test}.pkl``: each a dict with
  ``'image_data'`` (uint8 ``[N, 84, 84, 3]``) and ``'class_dict'``
  (``{wnid: [indices into image_data]}``). They are read with an unpickler
  that accepts NumPy arrays and plain containers only (a pickle can run
  code; these need none).

The real files give 64 / 16 / 20 classes of 600 images (38,400 / 9,600 /
12,000); any counts are read as they are, but a class in two splits, a
row that names no file, or an image index out of range is an error.
Classes are sorted by wnid in both layouts and the images grouped by
class (in the CSV's order, or the class dict's), so the same images give
the same split either way. `sha256` holds the SHA-256 of each file read: the
CSV or pickle itself, and for the images of a CSV one digest over the
lines ``<sha256 of the file>  images/<filename>`` in the CSV's order (what
``sha256sum`` prints for them), e.g.
``tail -n +2 train.csv | cut -d, -f1 | sed 's|^|images/|' | xargs sha256sum
| sha256sum`` from inside `manual_dir`.

Every problem with the files is a `MiniImageNetError` in one line that
names what was looked for and where.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import pickle

import numpy as np

IMAGE_SIZE = 84
SPLITS = ('train', 'val', 'test')
LAYOUTS = ('csv', 'pickle')
PICKLE_NAME = 'mini-imagenet-cache-{split}.pkl'
CSV_HEADER = ['filename', 'label']
# What a mini-ImageNet cache pickle may refer to: NumPy's array
# reconstruction (NumPy 1 and 2 module names) and plain containers.
_PICKLE_GLOBALS = {
    (module, name)
    for module in ('numpy', 'numpy.core.multiarray', 'numpy._core.multiarray',
                   'numpy.core.numeric', 'numpy._core.numeric')
    for name in ('_reconstruct', 'ndarray', 'dtype', 'scalar', '_frombuffer')
} | {('_codecs', 'encode'), ('collections', 'OrderedDict'),
     ('builtins', 'bytearray')}


class MiniImageNetError(ValueError):
  """The mini-ImageNet files are missing, misplaced or malformed (one line)."""


@dataclasses.dataclass(frozen=True)
class MiniImageNetSplit:
  """One split's images, labels, class names and the checksums of its files.

  Attributes:
    images: uint8 ``[num_images, 84, 84, 3]``.
    labels: int32 ``[num_images]``, indices into `class_names`.
    class_names: the split's wnids, sorted.
    sha256: ``{what was read: its SHA-256 hex digest}`` (module docstring).
  """

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  sha256: dict[str, str]


def expected_files(layout: str) -> list[str]:
  """The paths `layout` needs, relative to `manual_dir`."""
  if layout == 'csv':
    return [f'{s}.csv' for s in SPLITS] + ['images/']
  return [PICKLE_NAME.format(split=s) for s in SPLITS]


def _describe(layout: str) -> str:
  if layout == 'csv':
    return ('{train,val,test}.csv and images/ (the Ravi & Larochelle '
            'split)')
  return 'mini-imagenet-cache-{train,val,test}.pkl (the pickled caches)'


def _present(manual_dir: str, path: str) -> bool:
  full = os.path.join(manual_dir, path)
  return os.path.isdir(full) if path.endswith('/') else os.path.isfile(full)


def check_manual_dir(manual_dir: str | None, layout: str) -> str:
  """`manual_dir` if it holds `layout`'s files; else one line naming what
  is missing, what was looked for and where (and the other layout, if
  that is what the folder holds)."""
  if layout not in LAYOUTS:
    raise MiniImageNetError(f'mini-ImageNet layout={layout!r}: must be one '
                            f'of {", ".join(repr(x) for x in LAYOUTS)}')
  looked_for = _describe(layout)
  if not manual_dir or not os.path.isdir(manual_dir):
    raise MiniImageNetError(
        f'mini-ImageNet manual_dir={manual_dir!r} is not a folder; it must '
        f'hold {looked_for}')
  missing = [p for p in expected_files(layout) if not _present(manual_dir, p)]
  if missing:
    other = [x for x in LAYOUTS if x != layout and all(
        _present(manual_dir, p) for p in expected_files(x))]
    hint = (f'; it holds the {other[0]!r} layout: use '
            f'mini_imagenet_tasks/{other[0]}') if other else ''
    raise MiniImageNetError(
        f'mini-ImageNet manual_dir={manual_dir!r}: missing '
        f'{", ".join(missing)}; expected {looked_for}{hint}')
  return manual_dir


def _file_sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def _decode_rgb84(data: bytes) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(data)) as im:
    im = im.convert('RGB')
    if im.size != (IMAGE_SIZE, IMAGE_SIZE):
      im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    return np.asarray(im, np.uint8)


def _read_csv(path: str) -> list[tuple[str, str]]:
  """``[(filename, wnid)]`` of one split file."""
  with open(path, newline='') as f:
    rows = list(csv.reader(f))
  if not rows or [c.strip() for c in rows[0]] != CSV_HEADER:
    raise MiniImageNetError(
        f'{path}: first line {",".join(rows[0]) if rows else "(empty)"!r}'
        f' is not the header {",".join(CSV_HEADER)!r}')
  out = []
  for lineno, row in enumerate(rows[1:], 2):
    if not row:
      continue
    if len(row) != 2 or not row[0].strip() or not row[1].strip():
      raise MiniImageNetError(
          f'{path}:{lineno}: {",".join(row)!r} is not <filename>,<wnid>')
    out.append((row[0].strip(), row[1].strip()))
  if not out:
    raise MiniImageNetError(f'{path}: no images listed')
  return out


def _load_csv_split(manual_dir: str, split: str) -> MiniImageNetSplit:
  path = os.path.join(manual_dir, f'{split}.csv')
  rows = _read_csv(path)
  names = tuple(sorted({wnid for _, wnid in rows}))
  index = {n: i for i, n in enumerate(names)}
  images, listing = [], hashlib.sha256()
  for filename, _ in rows:
    image_path = os.path.join(manual_dir, 'images', filename)
    try:
      with open(image_path, 'rb') as f:
        data = f.read()
    except OSError as e:
      raise MiniImageNetError(
          f'{path}: lists {filename!r}, but {image_path} cannot be read '
          f'({e.strerror or e})') from None
    listing.update(f'{hashlib.sha256(data).hexdigest()}  images/'
                   f'{filename}\n'.encode())
    try:
      images.append(_decode_rgb84(data))
    except Exception as e:  # pylint: disable=broad-except
      raise MiniImageNetError(f'{image_path}: not a readable image '
                              f'({type(e).__name__}: {e})') from None
  labels = np.asarray([index[w] for _, w in rows], np.int32)
  order = np.argsort(labels, kind='stable')  # By class, as the pickles.
  return MiniImageNetSplit(
      images=np.stack(images)[order], labels=labels[order],
      class_names=names,
      sha256={f'{split}.csv': _file_sha256(path),
              f'images of {split}.csv': listing.hexdigest()})


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """Loads NumPy arrays and plain containers; refuses any other global."""

  def find_class(self, module, name):
    if (module, name) in _PICKLE_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(
        f'refers to {module}.{name}, which a mini-ImageNet cache does not '
        'hold; not loaded (a pickle can run code)')


def _load_pickle_split(manual_dir: str, split: str) -> MiniImageNetSplit:
  path = os.path.join(manual_dir, PICKLE_NAME.format(split=split))
  try:
    with open(path, 'rb') as f:
      # latin1: the caches written by Python 2 hold NumPy bytes as str.
      data = _ArraysOnlyUnpickler(f, encoding='latin1').load()
  except Exception as e:  # pylint: disable=broad-except
    raise MiniImageNetError(f'{path}: not a readable pickle '
                            f'({type(e).__name__}: {e})') from None
  if (not isinstance(data, dict)
      or not {'image_data', 'class_dict'} <= set(data)):
    keys = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise MiniImageNetError(
        f"{path}: holds {keys}, not a dict with 'image_data' and "
        "'class_dict'")
  images, class_dict = data['image_data'], data['class_dict']
  if (not isinstance(images, np.ndarray) or images.dtype != np.uint8
      or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3)):
    shape = getattr(images, 'shape', type(images).__name__)
    dtype = getattr(images, 'dtype', '')
    raise MiniImageNetError(
        f"{path}: 'image_data' is {dtype} {shape}, not uint8 "
        f'[N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3]')
  names = tuple(sorted(class_dict))
  order = [np.asarray(class_dict[n], np.int64).reshape(-1) for n in names]
  flat = np.concatenate(order) if order else np.zeros(0, np.int64)
  if flat.size == 0 or flat.min() < 0 or flat.max() >= len(images):
    raise MiniImageNetError(
        f"{path}: 'class_dict' indices must lie in [0, {len(images)}), "
        f"the rows of 'image_data'")
  if len(np.unique(flat)) != flat.size:
    raise MiniImageNetError(f"{path}: 'class_dict' lists an image under two "
                            'classes or twice')
  return MiniImageNetSplit(
      images=images[flat],
      labels=np.repeat(np.arange(len(names), dtype=np.int32),
                       [len(o) for o in order]),
      class_names=names,
      sha256={PICKLE_NAME.format(split=split): _file_sha256(path)})


def load_split(manual_dir: str, layout: str, split: str) -> MiniImageNetSplit:
  """One of `SPLITS` from `manual_dir` in `layout` (module docstring)."""
  if split not in SPLITS:
    raise MiniImageNetError(f'mini-ImageNet split={split!r}: must be one of '
                            f'{", ".join(repr(s) for s in SPLITS)}')
  check_manual_dir(manual_dir, layout)
  if layout == 'csv':
    return _load_csv_split(manual_dir, split)
  return _load_pickle_split(manual_dir, split)


def load_splits(manual_dir: str, layout: str) -> dict[str, MiniImageNetSplit]:
  """All of `SPLITS`; a class in two of them is an error naming both."""
  loaded = {s: load_split(manual_dir, layout, s) for s in SPLITS}
  seen = {}
  for split, data in loaded.items():
    for name in data.class_names:
      if name in seen:
        raise MiniImageNetError(
            f'mini-ImageNet manual_dir={manual_dir!r}: class {name!r} is in '
            f'both {seen[name]!r} and {split!r}; the splits must hold '
            'different classes')
      seen[name] = split
  return loaded
