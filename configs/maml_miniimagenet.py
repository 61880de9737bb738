"""MAML on mini-ImageNet few-shot classification (Finn et al. 2017, sec. 5.2).

Build the dataset once from your files (nothing is downloaded; `csv` for
{train,val,test}.csv and images/, `pickle` for the
mini-imagenet-cache-*.pkl files), then meta-train on its 64 training
classes and evaluate on 600 tasks of its 20 test classes::

  tfds build maml_plugin/tasks/miniimagenet_tfds.py --config=csv \
      --manual_dir=/data/mini-imagenet --data_dir=/data/tfds
  python -m maml_plugin.main --config=configs/maml_miniimagenet.py \
      --config.data_dir=/data/tfds --workdir=/tmp/mini
  python -m maml_plugin.evaluate --config=configs/maml_miniimagenet.py \
      --config.data_dir=/data/tfds --workdir=/tmp/mini

(`--config.dataset=mini_imagenet_tasks/pickle` for a dataset built from
the pickles.) The default is the paper's 5-way 1-shot protocol: Conv-4
with 32 filters and 2x2 max-pooling on 84x84 RGB images, transductive
batch norm, 5 inner steps at alpha=0.01 in training and 10 at test,
meta-batch 4, 15 query images per class, Adam 1e-3, 60,000 meta-steps,
second order. Arguments, comma-separated: at most one of `5w1s` (the
default) and `5w5s` (meta-batch 2); `fomaml` (the paper's first-order
approximation) or `mamlpp` (MAML++ on this protocol, as
configs/maml_omniglot.py's `set_mamlpp`); `quick` (a seconds-long run
for tests, on 28x28 images). E.g.
`--config=configs/maml_miniimagenet.py:5w5s,fomaml`. Any field can be
overridden, e.g. `--config.remat_inner_steps=True` (memory flat in the
inner steps) or `--config.task_batch_size=2` (tasks vmapped at once).
"""

import importlib.util
import os

from maml_plugin import config_files

PROTOCOLS = ('5w1s', '5w5s')
_WORDS = PROTOCOLS + ('fomaml', 'mamlpp', 'quick')
# The configs beside this file, in the repository or installed.
_HERE = os.path.dirname(os.path.abspath(__file__))


def _set_mamlpp(config) -> None:
  spec = importlib.util.spec_from_file_location(
      '_maml_omniglot', os.path.join(_HERE, 'maml_omniglot.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.set_mamlpp(config)


def get_config(arg=None):
  """Returns the config for `arg` (None or comma-separated words, above)."""
  words = [] if arg is None else [w.strip() for w in arg.split(',')]
  if (any(w not in _WORDS for w in words)
      or sum(w in PROTOCOLS for w in words) > 1
      or ('fomaml' in words and 'mamlpp' in words)):
    raise ValueError(f'get_config arg={arg!r}: must be None or a comma-'
                     f'separated list of at most one of {PROTOCOLS}, '
                     "'fomaml' or 'mamlpp', and 'quick'")
  # configs/maml_tfds.py (MAML, Conv-4 on episodes of a TFDS dataset; its
  # schedule, checkpoints and 600-task evaluation after 0..10 inner steps
  # with 15 query images per class), with mini-ImageNet's protocol below.
  config = config_files.load(os.path.join(_HERE, 'maml_tfds.py'))
  config.dataset = 'mini_imagenet_tasks/csv'  # or mini_imagenet_tasks/pickle
  config.image_size = 84  # the input size: images are resized if they differ
  config.num_query = 15  # query images per class in training (the paper's)
  # Conv-4 with 32 filters (the paper's, against overfitting) and 2x2
  # max-pooling (its mini-ImageNet network); transductive batch norm, as
  # maml_tfds (the statistics of the batch it sees, as the paper's code).
  config.num_filters = 32
  config.conv_downsample = 'maxpool'
  config.inner_lr = 0.01
  config.num_inner_steps = 5
  # Meta-batch 4 (1-shot) or 2 (5-shot); task_batch_size=1 takes the
  # meta-gradient one task at a time (the same gradient as vmapping them,
  # less memory), remat_inner_steps=True keeps memory flat in the steps.
  config.meta_batch_size = 4

  if '5w5s' in words:
    config.num_support = 5
    config.meta_batch_size = 2
  if 'quick' in words:  # Seconds on a CPU: small images, net and budget.
    config.update(image_size=28, num_filters=8, meta_batch_size=2,
                  num_query=2, num_inner_steps=1, num_train_steps=20,
                  steps_per_call=10, log_every_steps=10, eval_every_steps=20,
                  checkpoint_every_steps=20, num_eval_tasks=10,
                  eval_num_query=2, eval_num_inner_steps=2)
  if 'fomaml' in words:
    config.train_step = 'fomaml'
    del config.first_order  # First order by definition.
    del config.remat_inner_steps  # Nothing is differentiated through steps.
  if 'mamlpp' in words:
    _set_mamlpp(config)
  return config
