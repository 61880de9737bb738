"""Task sources: samplers that yield meta-batches in the DESIGN.md form.

Importing this package also registers the TFDS builders `sinusoid_tasks` and
`omniglot_tasks` (see `maml_plugin.tasks.tfds_builders`) when
tensorflow_datasets is installed.
"""

from maml_plugin.tasks.episodic import EpisodicTasks
from maml_plugin.tasks.sinusoid import SinusoidTasks

try:
  from maml_plugin.tasks import tfds_builders  # registers the builders
except ImportError:  # tensorflow_datasets is optional for in-process use.
  tfds_builders = None
