"""The top eigenvalue of a loss's Hessian by power iteration (benchmarks)."""

import jax
import jax.flatten_util
import jax.numpy as jnp


def top_eigenvalue(loss_fn, params, batch, iterations: int = 40):
  """Largest-magnitude Hessian eigenvalue of ``loss_fn(params, batch)`` at
  `params`: power iteration on Hessian-vector products (forward over
  reverse), `iterations` steps from the normalized all-ones vector."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  grad = lambda p: jax.grad(loss_fn)(p, batch)

  def hvp(v):
    tangent = jax.jvp(grad, (params,), (unravel(v),))[1]
    return jax.flatten_util.ravel_pytree(tangent)[0]

  def body(v, _):
    w = hvp(v)
    return w / jnp.linalg.norm(w), None

  v, _ = jax.lax.scan(body, jnp.ones_like(flat) / jnp.sqrt(flat.size), None,
                      length=iterations)
  return v @ hvp(v)
