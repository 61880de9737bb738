"""The TFDS builder of sinusoid tasks, ``sinusoid_tasks`` (offline).

Build it with the TFDS command line, from this file or by name::

  tfds build maml_plugin/tasks/sinusoid_tfds.py --data_dir=/tmp/tfds
  tfds build sinusoid_tasks --imports=maml_plugin.tasks --data_dir=/tmp/tfds

or from Python (importing `maml_plugin.tasks` registers it)::

  import maml_plugin.tasks
  import tensorflow_datasets as tfds
  ds = tfds.load('sinusoid_tasks/shots10', split='test', data_dir='/tmp/tfds')

The tasks come from the in-process sampler (`sinusoid.SinusoidTasks`), so
both paths share one task distribution; nothing is downloaded. Configs
``shots{5,10,20}``; splits ``train`` (`SINUSOID_TRAIN_TASKS` tasks) and
``test`` (600 fixed tasks, seed `TEST_SEED`); one example per task. Files
are tfrecord by default (``array_record`` where TensorFlow is not
installed: tfrecord needs it); pass ``file_format='array_record'`` to
`download_and_prepare` (``--file_format=array_record`` to ``tfds build``)
for `tfds.data_source` random access, which needs no TensorFlow.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from maml_plugin import tf_optional
from maml_plugin.tasks import sinusoid

SINUSOID_TRAIN_TASKS = 20_000
TEST_SEED = 1_000_003
_CHUNK = 1_000


class SinusoidTasksConfig(tfds.core.BuilderConfig):
  """K support and K query points per task."""

  def __init__(self, *, shots: int, **kwargs):
    super().__init__(name=f'shots{shots}', **kwargs)
    self.shots = shots


class SinusoidTasksBuilder(tf_optional.ArrayRecordUnlessTensorFlow,
                           tfds.core.GeneratorBasedBuilder):
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
