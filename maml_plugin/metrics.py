"""Metrics of the meta train step as `clu.metrics.Collection`s.

Names are shared by the train step, the metric writers and the docs:
``query_loss_before`` (query loss of the unadapted initialization),
``query_loss_after`` (query loss after inner adaptation: the meta-loss) and
``meta_grad_norm`` (global norm of the meta-gradient). Classification adds
``query_accuracy_before`` and ``query_accuracy_after``
(`ClassificationTrainMetrics`).
"""


import flax
from clu import metrics


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  query_loss_before: metrics.Average.from_output('query_loss_before')
  query_loss_after: metrics.Average.from_output('query_loss_after')
  meta_grad_norm: metrics.Average.from_output('meta_grad_norm')


@flax.struct.dataclass
class ClassificationTrainMetrics(metrics.Collection):
  # CLU reads a collection's own annotations, so the fields are repeated.
  query_loss_before: metrics.Average.from_output('query_loss_before')
  query_loss_after: metrics.Average.from_output('query_loss_after')
  meta_grad_norm: metrics.Average.from_output('meta_grad_norm')
  query_accuracy_before: metrics.Average.from_output('query_accuracy_before')
  query_accuracy_after: metrics.Average.from_output('query_accuracy_after')
