"""Implicit MAML (Rajeswaran et al. 2019) as a registered train step, ``'imaml'``.

Usage::

  algorithm = make_algorithm('imaml', loss_fn=loss_fn, tx=optax.adam(1e-3),
                             inner_lr=0.1, num_inner_steps=16,
                             prox_lambda=2.0, num_cg_steps=5, cg_tol=1e-5)

Each task adapts by `num_inner_steps` steps of gradient descent at
`inner_lr` on the proximal objective

    L_support(phi) + (prox_lambda / 2) * ||phi - theta||^2

from ``phi = theta`` (with ``inner_backtracks > 0``, each step's size is
halved until the proximal objective falls: `proximal_step`). Its minimizer ``phi*`` depends on ``theta`` through
``d phi* / d theta = (I + H / prox_lambda)^-1`` (implicit function theorem,
``H`` the Hessian of ``L_support`` at ``phi*``), so the task's
meta-gradient is

    g = (I + H / prox_lambda)^-1 grad L_query(phi*),

solved by conjugate gradients (`jax.scipy.sparse.linalg.cg`, at most
`num_cg_steps` iterations, relative tolerance `cg_tol`, started from
``grad L_query(phi*)``) on Hessian-vector products (`jax.jvp` of
`jax.grad`). Nothing is differentiated through the inner loop (its result
is under `jax.lax.stop_gradient`), so memory does not grow with
`num_inner_steps` (benchmarks/imaml_memory.py). ``num_cg_steps=0`` gives
the first-order approximation ``g = grad L_query(phi*)``. ``cg_lambda``
replaces ``prox_lambda`` in that system only (a damped Hessian term; see
`IMAMLHParams`).

The metrics add ``cg_residual``: the mean over tasks of CG's relative
residual ``||b - (I + H / lambda) g|| / ||b||`` (``b`` the query
gradient, ``lambda`` the system's: `cg_lambda` or `prox_lambda`),
recomputed from the returned ``g``; it is at most `cg_tol` when CG
converged within `num_cg_steps`.

``inner_solver='release'`` is the inner loop of the authors' released
code (github.com/aravindr93/imaml_dev, examples/omniglot_implicit_maml.py)
instead: `num_inner_steps` plain gradient steps on ``L_support`` alone,
then one gradient step at `inner_lr` on the proximal term alone, which
pulls the result back towards ``theta``: ``phi = theta + (1 - inner_lr *
prox_lambda) (phi - theta)``. The meta-gradient is computed at that
``phi`` in the same way.

Evaluation adapts with the same inner loop (gradient descent on the
proximal objective, anchored at the meta-parameters), for 0..N steps;
with ``inner_solver='release'``, plain gradient steps on the support loss
(as the release evaluates, without the pull-back).

Models with state (`core.StatefulLoss`): inner step k's support forward
pass gets the state step k-1 left and the key ``core.support_key(rng, k)``;
the query pass after adaptation continues from that state (it is what the
train state keeps, the mean over tasks, as in MAML); the Hessian-vector
products use the state after adaptation and the key ``core.support_key(rng,
num_inner_steps)`` (the same key in every CG iteration: one fixed linear
system), and their state is dropped.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from maml_plugin import core
from maml_plugin import fields
from maml_plugin.algorithms import base


INNER_SOLVERS = ('proximal', 'release')


@dataclasses.dataclass(frozen=True, kw_only=True)
class IMAMLHParams(base.HParams):
  """`base.HParams` (`inner_lr`: the proximal gradient-descent step size;
  `num_inner_steps`: its steps) and:

  Attributes:
    prox_lambda: strength of the proximal term, lambda in the paper.
    num_cg_steps: the most conjugate-gradient iterations per task (0: the
      first-order approximation).
    cg_tol: CG stops once its residual is below ``cg_tol * ||b||``.
    cg_lambda: the lambda of the linear system CG solves, ``(I + H /
      cg_lambda) g = grad L_query(phi*)``; None: `prox_lambda`, the exact
      implicit gradient. A larger value damps the Hessian term: where ``H``
      has eigenvalues below ``-prox_lambda`` (a non-convex proximal
      problem) the exact system is indefinite and CG does not converge,
      while any ``cg_lambda`` above ``-(H's lowest eigenvalue)`` keeps it
      positive definite.
    inner_backtracks: the most halvings of the inner step size per proximal
      step (a backtracking line search, `proximal_step`); 0: plain gradient
      descent at `inner_lr`, which diverges on a task whose support loss
      has curvature above ``2 / inner_lr - prox_lambda``. Any value keeps
      the proximal objective from rising, so every inner solve stays
      bounded, at the cost of ``inner_backtracks + 1`` more forward passes
      per step.
    inner_solver: 'proximal' (the paper: gradient descent on the proximal
      objective) or 'release' (the authors' code: plain steps on the
      support loss, then one step on the proximal term; module docstring).
  """

  prox_lambda: float = fields.positive(1.0)
  num_cg_steps: int = fields.integer(5, at_least=0)
  cg_tol: float = fields.positive(1e-5)
  cg_lambda: float | None = fields.field(
      None, check=fields.or_none(fields.positive_real),
      allowed='a finite number > 0, or None (prox_lambda: the exact '
      'implicit gradient)')
  inner_backtracks: int = fields.integer(0, at_least=0)
  inner_solver: str = fields.choice(*INNER_SOLVERS, default='proximal')

  @property
  def system_lambda(self) -> float:
    """The lambda of CG's system: `cg_lambda`, else `prox_lambda`."""
    return self.prox_lambda if self.cg_lambda is None else self.cg_lambda

  def check(self) -> None:
    # The proximal term alone is a quadratic of curvature prox_lambda:
    # gradient descent on it diverges unless inner_lr * prox_lambda < 2.
    if self.inner_lr * self.prox_lambda >= 2:
      raise fields.bad_value(
          'inner_lr', self.inner_lr,
          f'< 2 / prox_lambda = {2 / self.prox_lambda:g} (gradient descent '
          'on the proximal term diverges otherwise)')


def proximal_step(loss_fn: core.LossFn, params, anchor, batch, *,
                  inner_lr: float, prox_lambda: float, model_state=None,
                  rng=None, backtracks: int = 0):
  """One gradient-descent step on the proximal objective
  ``F(params) = loss + (prox_lambda/2)||params - anchor||^2``.

  With ``backtracks > 0`` the step size is the largest of ``inner_lr *
  2**-j``, ``j = 0..backtracks``, that lowers F by at least ``1e-4 * rate *
  ||grad F||^2`` (Armijo's condition; the candidates are forward passes
  with this step's state and key, evaluated together), and 0 when none
  does: F never rises, so the inner solve stays bounded whatever the
  curvature of the support loss. ``backtracks=0`` is plain gradient
  descent at `inner_lr`.

  Returns the new params, or ``(params, model_state)`` for a
  `core.StatefulLoss` (the state its gradient pass left).
  """
  fn = core.as_stateful(loss_fn)

  def proximal(p, loss):
    return loss + 0.5 * prox_lambda * sum(
        jnp.sum(jnp.square(x - a)) for x, a in
        zip(jax.tree.leaves(p), jax.tree.leaves(anchor)))

  (loss, new_state), grads = jax.value_and_grad(fn, has_aux=True)(
      params, model_state, batch, rng)
  direction = jax.tree.map(lambda p, g, a: g + prox_lambda * (p - a),
                           params, grads, anchor)
  rate = inner_lr
  if backtracks:
    rates = inner_lr * 0.5 ** jnp.arange(backtracks + 1).astype(loss.dtype)

    def value_at(r):
      p = jax.tree.map(lambda x, d: x - (r * d).astype(x.dtype), params,
                       direction)
      return proximal(p, fn(p, model_state, batch, rng)[0])

    values = jax.vmap(value_at)(rates)
    sq_norm = optax.global_norm(direction) ** 2
    ok = values <= proximal(params, loss) - 1e-4 * rates * sq_norm
    rate = jnp.where(jnp.any(ok), rates[jnp.argmax(ok)], 0.0)
  params = jax.tree.map(lambda x, d: x - (rate * d).astype(x.dtype), params,
                        direction)
  model_state = new_state
  return (params, model_state) if core.is_stateful(loss_fn) else params


def proximal_adapt(loss_fn: core.LossFn, params, support, *, inner_lr: float,
                   prox_lambda: float, num_steps: int, model_state=None,
                   rng=None, backtracks: int = 0, solver: str = 'proximal'):
  """ONE task's inner solve: `num_steps` `proximal_step`s from `params`,
  anchored at `params`, under `jax.lax.scan`; step k's key is
  ``core.support_key(rng, k)``. ``solver='release'``: the steps are plain
  gradient steps on the support loss (``prox_lambda`` 0), then one step at
  `inner_lr` on the proximal term alone pulls the result towards `params`
  (`IMAMLHParams.inner_solver`).

  The result is a constant for differentiation (`jax.lax.stop_gradient`):
  iMAML's meta-gradient does not go through the inner loop. Returns
  ``(adapted, model_state)`` (the state is None for a parameter-only loss).
  """
  fn = core.StatefulLoss(core.as_stateful(loss_fn))
  anchor = jax.lax.stop_gradient(params)
  step_lambda = 0.0 if solver == 'release' else prox_lambda

  def body(carry, k):
    p, state = carry
    return proximal_step(fn, p, anchor, support, inner_lr=inner_lr,
                         prox_lambda=step_lambda, model_state=state,
                         rng=core.support_key(rng, k),
                         backtracks=backtracks), None

  (adapted, model_state), _ = jax.lax.scan(
      body, (anchor, model_state), jnp.arange(num_steps, dtype=jnp.int32))
  if solver == 'release':
    shrink = 1.0 - inner_lr * prox_lambda
    adapted = jax.tree.map(lambda p, a: a + (shrink * (p - a)).astype(p.dtype),
                           adapted, anchor)
  return jax.lax.stop_gradient((adapted, model_state))


def implicit_gradient(support_loss, adapted, query_grad, *,
                      system_lambda: float, num_cg_steps: int,
                      cg_tol: float):
  """``(g, residual)``: CG's solution of ``(I + H/system_lambda) g =
  query_grad`` and its relative residual.

  Args:
    support_loss: ``support_loss(params) -> scalar``; ``H`` is its Hessian
      at `adapted`, applied by forward-over-reverse products
      (`jax.linearize` of `jax.grad`, i.e. `jax.jvp` evaluated once).
    adapted: the inner solution ``phi*`` (a pytree like the params).
    query_grad: ``grad L_query(phi*)``, the right-hand side (and CG's
      starting point).
    system_lambda: the system's lambda, `IMAMLHParams.system_lambda`
      (`cg_lambda`, else `prox_lambda`).
    num_cg_steps, cg_tol: see `IMAMLHParams`.

  Returns:
    `g` (a pytree like `query_grad`) and ``||query_grad - A g|| /
    ||query_grad||`` with ``A = I + H/system_lambda`` (0 when the query
    gradient is 0), computed with one more product.
  """
  # Forward-over-reverse, linearized once: each CG iteration reuses the
  # support pass's residuals instead of recomputing it.
  _, hvp = jax.linearize(jax.grad(support_loss), adapted)

  def matvec(v):
    return jax.tree.map(lambda a, b: a + b / system_lambda, v, hvp(v))

  g, _ = jax.scipy.sparse.linalg.cg(matvec, query_grad, x0=query_grad,
                                    tol=cg_tol, maxiter=num_cg_steps)
  rhs_norm = optax.global_norm(query_grad)
  error = optax.global_norm(
      jax.tree.map(jnp.subtract, query_grad, matvec(g)))
  residual = jnp.where(rhs_norm > 0,
                       error / jnp.where(rhs_norm > 0, rhs_norm, 1), 0.0)
  return g, residual


def imaml_gradient(loss_fn: core.LossFn, params, meta_batch, *,
                   hparams: IMAMLHParams, metric_fn=None, model_state=None,
                   rng=None):
  """``(meta_gradient, (MetaOutput, cg_residual))``: means over the tasks
  of `meta_batch` (see module docstring). `rng` is the meta-step's key or
  one key per task (`core.vmap_tasks`); None for a parameter-only loss."""
  fn = core.as_stateful(loss_fn)
  metric = None if metric_fn is None else core.as_stateful(metric_fn)

  def per_task(task, key):
    adapted, state = proximal_adapt(
        core.StatefulLoss(fn), params, task['support'], inner_lr=hparams.inner_lr,
        prox_lambda=hparams.prox_lambda, num_steps=hparams.num_inner_steps,
        model_state=model_state, rng=key,
        backtracks=hparams.inner_backtracks, solver=hparams.inner_solver)
    qkey = core.query_key(key)
    (after, query_state), query_grad = jax.value_and_grad(
        fn, has_aux=True)(adapted, state, task['query'], qkey)
    hkey = core.support_key(key, hparams.num_inner_steps)
    grad, residual = implicit_gradient(
        lambda p: fn(p, state, task['support'], hkey)[0], adapted,
        query_grad, system_lambda=hparams.system_lambda,
        num_cg_steps=hparams.num_cg_steps, cg_tol=hparams.cg_tol)
    before, _ = fn(params, model_state, task['query'], qkey)
    values = (before, after, residual)
    if metric is not None:
      values += (metric(params, model_state, task['query'], qkey)[0],
                 metric(adapted, query_state, task['query'], qkey)[0])
    return grad, values, query_state

  grads, values, states = core.vmap_tasks(per_task, meta_batch, rng)
  means = [jnp.mean(v) for v in values]
  new_state = (core.mean_over_tasks(states) if core.is_stateful(loss_fn)
               else None)
  output = core.MetaOutput(means[0], means[1], *means[3:],
                           model_state=new_state)
  return core.mean_over_tasks(grads), (output, means[2])


@base.TRAIN_STEPS.register('imaml', fields=IMAMLHParams)
def make_imaml(hparams: IMAMLHParams, *, loss_fn: core.LossFn,
               tx: optax.GradientTransformation,
               metric_fn: core.LossFn | None = None) -> base.MetaAlgorithm:
  """iMAML (see module docstring). With `metric_fn` (classification
  accuracy) the metrics also hold ``query_accuracy_before`` and
  ``query_accuracy_after``."""
  stateful = core.is_stateful(loss_fn)

  def keyed_gradient(params, tasks, model_state):
    batch, keys = tasks
    return imaml_gradient(loss_fn, params, batch, hparams=hparams,
                          metric_fn=metric_fn, model_state=model_state,
                          rng=keys)

  gradient_fn = core.over_task_batches(keyed_gradient,
                                       hparams.task_batch_size)

  def direction(state: base.MetaTrainState, tasks):
    grads, (output, cg_residual) = gradient_fn(state.params, tasks,
                                               base.model_state_of(state))
    return grads, output, {'cg_residual': cg_residual}

  train_step = base.meta_update_step(direction, tx, stateful=stateful)

  def inner_loop_for(loss):
    return core.InnerLoop(
        init=lambda theta: theta,
        step=lambda theta, phi, support, k: proximal_step(
            loss, phi, theta, support, inner_lr=hparams.inner_lr,
            prox_lambda=(0.0 if hparams.inner_solver == 'release'
                         else hparams.prox_lambda),
            backtracks=hparams.inner_backtracks),
        params=lambda phi: phi)

  return base.MetaAlgorithm(train_step=train_step,
                            inner_loop_for=inner_loop_for, loss_fn=loss_fn)
