"""MAML on your own images: a folder with one sub-folder per class.

Point it at the folder; the classes are split by fractions with a seed,
or by name::

  python -m maml_plugin.main --config=configs/maml_image_folder.py \
      --config.data_dir=/data/my_photos --workdir=/tmp/photos
  python -m maml_plugin.main --config=configs/maml_image_folder.py \
      --config.data_dir=/data/my_photos \
      "--config.train_classes=('cat','dog','fox')" \
      "--config.eval_classes=('owl','elk')" --config.ways=2 --workdir=/tmp/p2
  python -m maml_plugin.evaluate --config=configs/maml_image_folder.py \
      --config.data_dir=/data/my_photos --workdir=/tmp/photos

The protocol is configs/maml_miniimagenet.py's (MAML 5-way 1-shot, Conv-4
with 32 filters on 84x84 RGB images, 5 inner steps at 0.01, 10 at test)
and so are the arguments (`5w5s`, `fomaml`, `mamlpp`, `quick`); only the
task family differs: `image_folder` (maml_plugin/tasks/image_folder.py)
reads the class folders of `data_dir`, 80% of the classes for training
and 20% for evaluation (`train_fraction`, `eval_fraction`, shuffled with
`split_seed`) unless `train_classes` and `eval_classes` name them, and
resizes every image to `image_size` (`channels=1` for greyscale).
"""

import os

from maml_plugin import config_files

# The maml_miniimagenet.py beside this file, in the repository or installed.
_MAML_MINIIMAGENET = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'maml_miniimagenet.py')
# What the TFDS dataset needed and a folder does not.
_TFDS_FIELDS = ('dataset', 'train_split', 'eval_split', 'image_key',
                'label_key')


def get_config(arg=None):
  """maml_miniimagenet's config for `arg`, on the image_folder family."""
  config = config_files.load(_MAML_MINIIMAGENET if arg is None
                             else f'{_MAML_MINIIMAGENET}:{arg}')
  config.task = 'image_folder'
  for name in _TFDS_FIELDS:
    del config[name]
  config.data_dir = ''  # The folder of class folders: set it.
  config.train_classes = ()  # () and (): split by the fractions below.
  config.eval_classes = ()
  config.train_fraction = 0.8
  config.eval_fraction = 0.2
  config.split_seed = 0
  config.channels = 3
  return config
