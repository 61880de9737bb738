"""N-way K-shot episodes of any TFDS image-classification dataset:
the ``'tfds_episodic'`` task family.

From a config alone (`TFDSEpisodicFields`; `configs/maml_tfds.py`)::

  config.task = 'tfds_episodic'
  config.dataset = 'mnist'          # any prepared TFDS dataset: 'omniglot',
                                    # 'cifar100', 'my_set/config:1.0.0'
  config.data_dir = ''              # '': $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.train_split = 'train'      # TFDS split strings: 'train[:80%]', ...
  config.eval_split = 'test'
  config.image_key = 'image'        # the dataset's feature names
  config.label_key = 'label'
  config.image_size = 0             # 0: as stored; N: resized to N x N
  config.ways, config.num_support, config.num_query = 5, 1, 15

Each split is read whole into memory once (`episodic.arrays_from_tfds`,
nothing downloads), resized to ``image_size`` if it is set
(`episodic.resize_images`), and sampled on device
(`episodic.EpisodicTasks`); images of any square size and channel count
feed `conv4`. A dataset that
is not prepared under `data_dir`, a split it lacks, or a feature it lacks
stops the run in one line naming the data_dir, its splits or its
features. Classes of the training and evaluation splits are used as they
are: evaluation is on unseen classes only when the dataset's splits hold
different classes (TFDS's 'omniglot': background and evaluation
alphabets); for datasets such as 'mnist', whose splits share classes, use
``train[:N]``-style splits of your own or read the numbers accordingly.
"""

from __future__ import annotations

import dataclasses

from maml_plugin import fields
from maml_plugin.tasks import base
from maml_plugin.tasks import episodic


def _non_empty_string(v) -> bool:
  return isinstance(v, str) and bool(v)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TFDSEpisodicFields(fields.Fields):
  """The 'tfds_episodic' family's config fields.

  Attributes:
    dataset: the TFDS name, as for `tfds.builder` (``'mnist'``,
      ``'omniglot:3.0.0'``, ``'my_set/config'``).
    data_dir: where it is prepared ('': TFDS's default).
    train_split, eval_split: TFDS split strings.
    image_key, label_key: the image and the int label feature.
    image_size: 0 keeps the stored size; N resizes the images to N x N
      (LANCZOS) when they are read.
    ways: classes per task (N).
    num_support: images per class in the support set (K).
    num_query: query images per class in training.
    eval_num_query: query images per class in evaluation (the trainer's
      field too): checked against the evaluation split's classes.
    transductive: batch norm normalises with the statistics of the batch
      it sees; False: query examples with their task's support statistics
      (`episodic.SupportContextTasks`).
  """

  dataset: str = fields.field(check=_non_empty_string,
                              allowed='a TFDS dataset name')
  data_dir: str = fields.field(
      '', check=fields.string,
      allowed="a folder path, or '' for TFDS's default")
  train_split: str = fields.field('train', check=_non_empty_string,
                                  allowed='a TFDS split string')
  eval_split: str = fields.field('test', check=_non_empty_string,
                                 allowed='a TFDS split string')
  image_key: str = fields.field('image', check=_non_empty_string,
                                allowed='a feature name')
  label_key: str = fields.field('label', check=_non_empty_string,
                                allowed='a feature name')
  image_size: int = fields.integer(0, at_least=0)
  ways: int = fields.integer(at_least=2)
  num_support: int = fields.integer()
  num_query: int = fields.integer()
  eval_num_query: int = fields.integer()
  transductive: bool = fields.flag(True)


def _episodes(task_fields: TFDSEpisodicFields, split_field: str,
              query_field: str) -> episodic.EpisodicTasks:
  split = getattr(task_fields, split_field)
  images, labels = episodic.arrays_from_tfds(
      task_fields.dataset, split, image_key=task_fields.image_key,
      label_key=task_fields.label_key, data_dir=task_fields.data_dir or None)
  if task_fields.image_size:
    images = episodic.resize_images(images, task_fields.image_size)
  return episodic.episodes_for_fields(
      images, labels, task_fields, query_field=query_field,
      source=f'{split_field}={split!r} of {task_fields.dataset!r}')


@base.TASKS.register('tfds_episodic', fields=TFDSEpisodicFields)
def make_tfds_episodic_problem(task_fields: TFDSEpisodicFields
                               ) -> base.TaskProblem:
  """N-way K-shot episodes of a TFDS dataset: cross-entropy, accuracy."""
  return episodic.classification_problem(
      _episodes(task_fields, 'train_split', 'num_query'),
      _episodes(task_fields, 'eval_split', 'eval_num_query'),
      transductive=task_fields.transductive)
