r"""The TFDS builder of mini-ImageNet, ``mini_imagenet_tasks`` (offline).

Build it from the files you have in `manual_dir`, named by their layout
(`miniimagenet.LAYOUTS`): ``csv`` for ``{train,val,test}.csv`` and
``images/`` (the Ravi & Larochelle split), ``pickle`` for
``mini-imagenet-cache-{train,val,test}.pkl``::

  tfds build maml_plugin/tasks/miniimagenet_tfds.py --config=csv \
      --manual_dir=/data/mini-imagenet --data_dir=/data/tfds
  tfds build mini_imagenet_tasks/pickle --imports=maml_plugin.tasks \
      --manual_dir=/data/mini-imagenet --data_dir=/data/tfds

or from Python (importing `maml_plugin.tasks` registers it)::

  builder = tfds.builder('mini_imagenet_tasks/csv', data_dir='/data/tfds')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir='/data/mini-imagenet'))
  builder.info.metadata['sha256']   # {'train.csv': '...', ...}

Nothing is downloaded: it reads the files with `miniimagenet.load_splits`.
Splits ``train``, ``val`` and ``test`` (64 / 16 / 20 classes with the real
files); an example is one 84x84 RGB image (stored as PNG, lossless) and its
label, one label space across the splits whose names are the wnids. The
dataset's metadata (``builder.info.metadata``, saved with it) holds the
layout, each split's class and image counts, and the SHA-256 of every
file read. Without TensorFlow it writes ``array_record`` files, read by
`episodic.arrays_from_tfds` and the ``tfds_episodic`` task family
(``configs/maml_miniimagenet.py``).
"""

from __future__ import annotations

import io

from PIL import Image
import tensorflow_datasets as tfds

from maml_plugin import tf_optional
from maml_plugin.tasks import miniimagenet


def _png(image) -> bytes:
  """A [84, 84, 3] uint8 image as PNG bytes (PIL: no TensorFlow needed)."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def _manual_dir(dl_manager, layout: str) -> str:
  """The manual_dir, checked: TFDS's own error for a missing or empty one
  spans lines and names no file."""
  path = getattr(dl_manager, '_manual_dir', None)
  miniimagenet.check_manual_dir(str(path) if path else None, layout)
  return str(dl_manager.manual_dir)


class MiniImageNetTasksBuilder(tf_optional.ArrayRecordUnlessTensorFlow,
                               tfds.core.GeneratorBasedBuilder):
  """mini-ImageNet 84x84 RGB images for few-shot episodes, read offline."""

  name = 'mini_imagenet_tasks'
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='csv', description='From {train,val,test}.csv and images/ '
          '(the Ravi & Larochelle split).'),
      tfds.core.BuilderConfig(
          name='pickle', description='From '
          'mini-imagenet-cache-{train,val,test}.pkl.'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put train.csv, val.csv, test.csv and images/ (config csv), or '
      'mini-imagenet-cache-{train,val,test}.pkl (config pickle), in '
      'manual_dir.')

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(84, 84, 3)),
            'label': tfds.features.ClassLabel(),
        }),
        supervised_keys=('image', 'label'),
        metadata=tfds.core.MetadataDict(),
        description='mini-ImageNet (Vinyals et al. 2016; the split of Ravi '
        '& Larochelle 2017): 100 ImageNet classes of 600 images, 84x84 RGB.')

  def _split_generators(self, dl_manager):
    layout = self.builder_config.name
    manual_dir = _manual_dir(dl_manager, layout)
    loaded = miniimagenet.load_splits(manual_dir, layout)
    # One label space across the splits: their wnids, split after split.
    names = [n for s in loaded.values() for n in s.class_names]
    self.info.features['label'].names = names
    self.info.metadata.update({
        'layout': layout,
        'sha256': {k: v for s in loaded.values() for k, v in s.sha256.items()},
        'classes': {name: len(s.class_names) for name, s in loaded.items()},
        'images': {name: int(s.labels.size) for name, s in loaded.items()},
    })
    first_label = 0
    generators = {}
    for name, data in loaded.items():
      generators[name] = self._generate_examples(data, first_label)
      first_label += len(data.class_names)
    return generators

  def _generate_examples(self, data, offset):
    for i in range(data.images.shape[0]):
      yield i, {'image': _png(data.images[i]),
                'label': int(data.labels[i]) + offset}
