"""Task sources: samplers that yield meta-batches in the DESIGN.md form."""

from maml_plugin.tasks.episodic import EpisodicTasks
from maml_plugin.tasks.sinusoid import SinusoidTasks
