r"""The TFDS builder of Omniglot images, ``omniglot_tasks`` (offline).

Build it with the TFDS command line, from this file or by name, from the
Omniglot files in `manual_dir` (the layout of ``$MAML_PLUGIN_DATA_DIR``)::

  tfds build maml_plugin/tasks/omniglot_tfds.py --manual_dir=/path/to/data
  tfds build omniglot_tasks/vinyals --imports=maml_plugin.tasks \
      --manual_dir=/path/to/data

or from Python (importing `maml_plugin.tasks` registers it)::

  builder = tfds.builder('omniglot_tasks/vinyals', data_dir='/tmp/tfds')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir='/path/to/data'))           # holds omniglot/images_*.zip
  train = tfds.data_source('omniglot_tasks/vinyals', split='train',
                           data_dir='/tmp/tfds')   # needs array_record

Without TensorFlow (the default install) it builds ``array_record`` files,
read with `tfds.data_source` (``tfds.load``/``as_dataset`` need it).

Nothing is downloaded: it reads the two zips and the Vinyals split files
with `omniglot.load_split`. Configs and splits: ``vinyals``: ``train``,
``val``, ``test``; ``lake``: ``background``, ``evaluation``;
``reference`` (the MAML paper's code, `omniglot.reference_characters`):
``train``, ``val``, ``test``, unrotated (rotate classes per task:
``EpisodicTasks(rotate_classes=True)``). An example is
one image with its class label (``Alphabet/characterNN/rotDDD``), alphabet
and character; feed the images to `EpisodicTasks` for N-way K-shot
episodes.
"""

from __future__ import annotations

import io

from PIL import Image
import tensorflow_datasets as tfds

from maml_plugin import tf_optional
from maml_plugin.tasks import omniglot

_OMNIGLOT_SPLITS = {
    'vinyals': {'train': 'vinyals_train', 'val': 'vinyals_val',
                'test': 'vinyals_test'},
    'lake': {'background': 'lake_background',
             'evaluation': 'lake_evaluation'},
    'reference': {'train': 'reference_train', 'val': 'reference_val',
                  'test': 'reference_test'},
}


def _png(image) -> bytes:
  """A [28, 28, 1] uint8 image as PNG bytes, encoded with PIL: TFDS
  encodes a NumPy image with TensorFlow, which the default install lacks
  (the stored pixels are the same either way; PNG is lossless)."""
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0]).save(buffer, format='PNG')
  return buffer.getvalue()


class OmniglotTasksBuilder(tf_optional.ArrayRecordUnlessTensorFlow,
                           tfds.core.GeneratorBasedBuilder):
  """Omniglot 28x28 (LANCZOS) images for few-shot episodes, read offline."""

  name = 'omniglot_tasks'
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='vinyals', description='1,028/172/423 characters x 4 '
          'rotations (each its own class): 4,112/688/1,692 classes.'),
      tfds.core.BuilderConfig(
          name='lake', description='30 background / 20 evaluation '
          'alphabets (964/659 characters, unrotated).'),
      tfds.core.BuilderConfig(
          name='reference', description='The MAML reference code\'s split: '
          '1,100/100/423 characters of both zips at random, whatever their '
          'alphabet (unrotated; rotate per task).'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put omniglot/images_background.zip, omniglot/images_evaluation.zip '
      'and omniglot/splits/vinyals/{train,val,trainval,test}.txt in '
      'manual_dir (Omniglot: github.com/brendenlake/omniglot, MIT).')

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(28, 28, 1)),
            'label': tfds.features.ClassLabel(),
            'alphabet': tfds.features.Text(),
            'character': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        description='Omniglot (Lake et al. 2015), greyscale 28x28, ink = 255.')

  def _split_generators(self, dl_manager):
    data_dir = str(dl_manager.manual_dir)
    omniglot.resolve_data_dir(data_dir)  # one-line error if files are missing
    splits = _OMNIGLOT_SPLITS[self.builder_config.name]
    loaded = {name: omniglot.load_split(split, data_dir=data_dir)
              for name, split in splits.items()}
    # One label space across the splits of a config: class names, in order.
    names = [n for s in loaded.values() for n in s.class_names]
    self.info.features['label'].names = names
    offsets, total = {}, 0
    for name, data in loaded.items():
      offsets[name], total = total, total + data.num_classes
    return {name: self._generate_examples(data, offsets[name])
            for name, data in loaded.items()}

  def _generate_examples(self, data, offset):
    for i in range(data.images.shape[0]):
      class_name = data.class_names[data.labels[i]]
      alphabet, character, _ = class_name.split('/')
      yield i, {'image': _png(data.images[i]),
                'label': int(data.labels[i]) + offset,
                'alphabet': alphabet, 'character': character}
