"""Former home of the registered train steps; kept so old imports work.

The algorithms now live in `maml_plugin.algorithms`: the shared train
state, `MetaAlgorithm` and the `TRAIN_STEPS` registry in
`maml_plugin.algorithms.base`, one module per algorithm beside it. This
module re-exports them (``from maml_plugin import train_steps`` and
``train_steps.make_algorithm(...)`` keep working); new code should import
`maml_plugin.algorithms`.
"""

# pylint: disable=unused-import
from maml_plugin.algorithms.anil import head_mask
from maml_plugin.algorithms.base import HParams
from maml_plugin.algorithms.base import MetaAlgorithm
from maml_plugin.algorithms.base import MetaTrainState
from maml_plugin.algorithms.base import TRAIN_STEPS
from maml_plugin.algorithms.base import TrainStep
from maml_plugin.algorithms.base import accepts_metric_fn
from maml_plugin.algorithms.base import apply_meta_gradient
from maml_plugin.algorithms.base import gradient_train_step
from maml_plugin.algorithms.base import hparam_names
from maml_plugin.algorithms.base import leaf_paths
from maml_plugin.algorithms.base import make_algorithm
from maml_plugin.algorithms.base import make_train_step
from maml_plugin.algorithms.base import merge_leaves
from maml_plugin.algorithms.base import model_state_of
from maml_plugin.algorithms.base import param_path
from maml_plugin.algorithms.base import restrict_loss
from maml_plugin.algorithms.base import select_leaves
from maml_plugin.algorithms.base import split_leaves
from maml_plugin.algorithms.base import train_metrics
from maml_plugin.algorithms.metasgd import metasgd_params
