"""Task families, registered by name (``config.task``), and their samplers.

Usage::

  from maml_plugin.tasks import SinusoidTasks, EpisodicTasks
  tasks = SinusoidTasks(num_support=10, num_query=10)
  meta_batch = tasks.train_batch(rng, num_tasks=25)   # jittable

`base` holds the `TASKS` registry and `TaskProblem` (what a family gives
the trainer); each family is one module that registers itself:
`sinusoid` (the smallest: copy it to add one), `omniglot`,
`tfds_episodic` (any TFDS image-classification dataset) and
`image_folder` (a folder of your images, one sub-folder per class), all
episodes from `episodic`, which samples N-way K-shot tasks from any image
arrays.

Importing this package also registers the TFDS builders `sinusoid_tasks`,
`omniglot_tasks` and `mini_imagenet_tasks`, one per module
(`sinusoid_tfds`, `omniglot_tfds`, `miniimagenet_tfds`; the files of
mini-ImageNet are read by `miniimagenet`),
when tensorflow_datasets is installed: ``tfds build --imports
maml_plugin.tasks sinusoid_tasks`` and ``tfds build
maml_plugin/tasks/sinusoid_tfds.py`` both work.
"""

from maml_plugin.tasks import image_folder
from maml_plugin.tasks import omniglot
from maml_plugin.tasks import sinusoid
from maml_plugin.tasks import tfds_episodic
from maml_plugin.tasks.base import TASKS
from maml_plugin.tasks.base import TaskProblem
from maml_plugin.tasks.base import TaskSource
from maml_plugin.tasks.base import build_task_problem
from maml_plugin.tasks.base import make_task_problem
from maml_plugin.tasks.episodic import EpisodicTasks
from maml_plugin.tasks.sinusoid import SinusoidTasks

try:  # tensorflow_datasets is optional for in-process use.
  from maml_plugin.tasks import miniimagenet_tfds  # 'mini_imagenet_tasks'
  from maml_plugin.tasks import omniglot_tfds  # registers 'omniglot_tasks'
  from maml_plugin.tasks import sinusoid_tfds  # registers 'sinusoid_tasks'
except ImportError:
  miniimagenet_tfds = omniglot_tfds = sinusoid_tfds = None
