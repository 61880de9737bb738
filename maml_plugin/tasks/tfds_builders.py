"""Former home of both TFDS builders; kept so old imports work.

Each builder now has its own module, so that ``tfds build <module>.py``
finds exactly one: `maml_plugin.tasks.sinusoid_tfds` and
`maml_plugin.tasks.omniglot_tfds`.
"""

# pylint: disable=unused-import
from maml_plugin.tasks.omniglot_tfds import OmniglotTasksBuilder
from maml_plugin.tasks.sinusoid_tfds import SINUSOID_TRAIN_TASKS
from maml_plugin.tasks.sinusoid_tfds import SinusoidTasksBuilder
from maml_plugin.tasks.sinusoid_tfds import TEST_SEED
