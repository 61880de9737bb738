"""TFDS builders of our task sources, registered when imported (offline).

Usage::

  import maml_plugin.tasks   # registers 'sinusoid_tasks' and 'omniglot_tasks'
  import tensorflow_datasets as tfds

  ds = tfds.load('sinusoid_tasks/shots10', split='test')
  builder = tfds.builder('omniglot_tasks/vinyals', data_dir='/tmp/tfds')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir='/path/to/data'))           # holds omniglot/images_*.zip
  train = tfds.data_source('omniglot_tasks/vinyals', split='train',
                           data_dir='/tmp/tfds')   # needs array_record

Nothing is downloaded: `omniglot_tasks` reads the two zips and the Vinyals
split files from `manual_dir` (the layout of ``$MAML_PLUGIN_DATA_DIR``), and
`sinusoid_tasks` generates its tasks with the in-process sampler
(`SinusoidTasks`), so both paths share one task distribution. Files are
written as tfrecord by default; pass ``file_format='array_record'`` to
`download_and_prepare` for `tfds.data_source` random access.

Splits: ``sinusoid_tasks/shots{5,10,20}``: ``train`` (20,000 tasks) and
``test`` (600 fixed tasks, seed `TEST_SEED`); ``omniglot_tasks/vinyals``:
``train``, ``val``, ``test``; ``omniglot_tasks/lake``: ``background``,
``evaluation``. An Omniglot example is one image with its class label
(``Alphabet/characterNN/rotDDD``), alphabet and character; feed the
images to `EpisodicTasks` for N-way K-shot episodes.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from maml_plugin.tasks import omniglot
from maml_plugin.tasks import sinusoid

SINUSOID_TRAIN_TASKS = 20_000
TEST_SEED = 1_000_003
_CHUNK = 1_000


class SinusoidTasksConfig(tfds.core.BuilderConfig):
  """K support and K query points per task."""

  def __init__(self, *, shots: int, **kwargs):
    super().__init__(name=f'shots{shots}', **kwargs)
    self.shots = shots


class SinusoidTasksBuilder(tfds.core.GeneratorBasedBuilder):
  """Sinusoid regression tasks (MAML paper, sec. 5.1): one example per task."""

  name = 'sinusoid_tasks'
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [SinusoidTasksConfig(shots=k, description=f'{k}-shot')
                     for k in (5, 10, 20)]

  def _info(self):
    k = self.builder_config.shots
    points = tfds.features.Tensor(shape=(k, 1), dtype=np.float32)
    part = tfds.features.FeaturesDict({'x': points, 'y': points})
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'support': part, 'query': part,
            'amplitude': np.float32, 'phase': np.float32}),
        description='y = A sin(x - phase), A~U[0.1,5], phase~U[0,pi], '
        'x~U[-5,5]; support and query points per task.')

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated, nothing to download.
    return {'train': self._generate_examples(False),
            'test': self._generate_examples(True)}

  def _generate_examples(self, test):
    import jax  # pylint: disable=g-import-not-at-top
    k = self.builder_config.shots
    sampler = sinusoid.SinusoidTasks(num_support=k, num_query=k)
    if test:
      chunks = [sampler.held_out(TEST_SEED, num_tasks=600, num_query=k)]
    else:
      key = jax.random.key(0)
      chunks = (sampler.train_batch(jax.random.fold_in(key, c), _CHUNK)
                for c in range(SINUSOID_TRAIN_TASKS // _CHUNK))
    index = 0
    for chunk in chunks:
      chunk = jax.tree.map(np.asarray, chunk)
      for i in range(chunk['amplitude'].shape[0]):
        yield index, jax.tree.map(lambda a: a[i], chunk)  # pylint: disable=cell-var-from-loop
        index += 1


_OMNIGLOT_SPLITS = {
    'vinyals': {'train': 'vinyals_train', 'val': 'vinyals_val',
                'test': 'vinyals_test'},
    'lake': {'background': 'lake_background',
             'evaluation': 'lake_evaluation'},
}


class OmniglotTasksBuilder(tfds.core.GeneratorBasedBuilder):
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
      yield i, {'image': data.images[i],
                'label': int(data.labels[i]) + offset,
                'alphabet': alphabet, 'character': character}
