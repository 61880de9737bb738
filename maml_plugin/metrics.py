"""Metrics of the meta train step as `clu.metrics.Collection` classes.

Names are shared by the train step, the metric writers and the docs:
``query_loss_before`` (query loss of the unadapted initialization),
``query_loss_after`` (query loss after inner adaptation: the meta-loss) and
``meta_grad_norm`` (global norm of the meta-gradient). Classification adds
``query_accuracy_before`` and ``query_accuracy_after``
(`ClassificationTrainMetrics`). `guards.guard_train_step` adds
``skipped_updates`` (a `Count`). iMAML adds ``cg_residual`` (its
conjugate-gradient solve's relative residual, `with_averages`).
"""

import functools

import flax
import jax.numpy as jnp
from clu import metrics


@flax.struct.dataclass
class Count(metrics.Metric):
  """A number of events summed over merged steps (``skipped_updates``)."""

  total: jnp.ndarray

  @classmethod
  def empty(cls) -> 'Count':
    return cls(total=jnp.zeros((), jnp.int32))

  @classmethod
  def from_model_output(cls, values, **_) -> 'Count':
    return cls(total=jnp.sum(values).astype(jnp.int32))

  def merge(self, other: 'Count') -> 'Count':
    return type(self)(total=self.total + other.total)

  def compute(self):
    return self.total


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


@functools.lru_cache(maxsize=None)
def with_averages(metrics_cls, names: tuple[str, ...]):
  """`metrics_cls` with an `Average` of each output in `names` beside its
  own fields; one class per ``(metrics_cls, names)``, so a jitted step
  returns the same type every trace."""
  fields = dict(metrics_cls.__annotations__)  # CLU reads only a class's own.
  fields.update({name: metrics.Average.from_output(name) for name in names})
  return flax.struct.dataclass(type(f'{metrics_cls.__name__}With',
                                    (metrics_cls,),
                                    {'__annotations__': fields}))
