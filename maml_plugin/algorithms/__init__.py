"""The MAML family: one module per algorithm, each registering its train step.

Usage::

  from maml_plugin import algorithms
  algorithm = algorithms.make_algorithm('maml', loss_fn=loss_fn, tx=tx,
                                        inner_lr=0.01)
  algorithms.TRAIN_STEPS.names()   # ['anil', 'fomaml', 'maml', ...]

`base` holds what they share (the train state, `MetaAlgorithm`, the
`TRAIN_STEPS` registry, `HParams`, the gradient train step); each other
module is one algorithm: `maml`, `fomaml` (the smallest: copy it to add
one), `metasgd`, `anil`, `reptile`, `mamlpp`, `imaml`. Importing this package
registers them all.
"""

from maml_plugin.algorithms import anil
from maml_plugin.algorithms import fomaml
from maml_plugin.algorithms import imaml
from maml_plugin.algorithms import maml
from maml_plugin.algorithms import mamlpp
from maml_plugin.algorithms import metasgd
from maml_plugin.algorithms import reptile
from maml_plugin.algorithms.base import HParams
from maml_plugin.algorithms.base import MetaAlgorithm
from maml_plugin.algorithms.base import MetaTrainState
from maml_plugin.algorithms.base import TRAIN_STEPS
from maml_plugin.algorithms.base import TrainStep
from maml_plugin.algorithms.base import accepts_metric_fn
from maml_plugin.algorithms.base import describe_hparams
from maml_plugin.algorithms.base import hparam_names
from maml_plugin.algorithms.base import hparams_list
from maml_plugin.algorithms.base import holds_inner_rates
from maml_plugin.algorithms.base import make_algorithm
from maml_plugin.algorithms.base import make_train_step
