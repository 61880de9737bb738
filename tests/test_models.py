"""Conv-4: im2col convolution equals lax.conv; transductive batch norm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from maml_plugin import core
from maml_plugin import models
from maml_plugin import tasks
from maml_plugin.models import Conv4
from maml_plugin.models import conv3x3_as_matmul


@pytest.mark.parametrize('size,stride', [(28, 2), (14, 2), (7, 2), (4, 2),
                                         (28, 1), (7, 1), (3, 1)])
def test_conv_as_matmul_equals_lax_conv(size, stride):
  kx, kk = jax.random.split(jax.random.key(size * 10 + stride))
  x = jax.random.normal(kx, (2, size, size, 3))
  kernel = jax.random.normal(kk, (3, 3, 3, 4))
  expected = jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(conv3x3_as_matmul(x, kernel, stride), expected,
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('downsample', ['stride', 'maxpool'])
def test_output_shape_and_four_blocks_of_64_filters(downsample):
  model = Conv4(5, downsample=downsample, rngs=nnx.Rngs(0))
  out = jax.eval_shape(model, jax.ShapeDtypeStruct((3, 28, 28, 1),
                                                   jnp.float32))
  assert out.shape == (3, 5)
  kernels = [b.kernel.value.shape for b in model.blocks]
  assert kernels == [(3, 3, 1, 64)] + [(3, 3, 64, 64)] * 3


def _loss_and_graph(conv_impl):
  graphdef, params = nnx.split(
      Conv4(5, num_filters=4, image_size=14, conv_impl=conv_impl,
            rngs=nnx.Rngs(0)),
      nnx.Param)

  def loss_fn(p, batch):
    return optax.softmax_cross_entropy_with_integer_labels(
        nnx.merge(graphdef, p)(batch['x']), batch['y']).mean()

  return loss_fn, params


def test_meta_gradient_matches_the_lax_conv_model():
  rng = np.random.default_rng(0)
  batch = {p: {'x': rng.random((2, 5 * n, 14, 14, 1), np.float32),
               'y': np.tile(np.arange(5), (2, n)).astype(np.int32)}
           for p, n in (('support', 1), ('query', 2))}
  grads = []
  for impl in ('matmul', 'lax'):
    loss_fn, params = _loss_and_graph(impl)
    grads.append(jax.jit(jax.grad(lambda p: core.maml_loss(
        loss_fn, p, batch, inner_lr=0.4)))(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3,
                                                       atol=2e-5), *grads)


def test_batch_norm_uses_the_batch_and_stores_nothing():
  model = Conv4(5, num_filters=8, image_size=14, rngs=nnx.Rngs(0))
  before = jax.tree.map(np.array, nnx.state(model))
  call = nnx.jit(lambda m, x: m(x))
  x = jax.random.normal(jax.random.key(1), (6, 14, 14, 1))
  alone = call(model, x[:3])
  together = call(model, x)
  # Transductive: an example's output depends on the batch it is in.
  assert not np.allclose(alone, together[:3], atol=1e-4)
  # Same batch, same output; no state (running statistics) anywhere changed.
  np.testing.assert_allclose(call(model, x[:3]), alone, rtol=1e-5)
  after = jax.tree.map(np.array, nnx.state(model))
  jax.tree.map(np.testing.assert_array_equal, before, after)
  assert not nnx.state(model, nnx.BatchStat)


def test_bad_variant_is_refused():
  with pytest.raises(ValueError, match="downsample='avg': must be 'stride'"):
    Conv4(5, downsample='avg', rngs=nnx.Rngs(0))


def _query_logits(model, query, support, context):
  return model(query, context=support if context else None)


@pytest.mark.parametrize('downsample', ['stride', 'maxpool'])
def test_non_transductive_query_does_not_see_other_query_examples(downsample):
  model = Conv4(5, num_filters=8, downsample=downsample, rngs=nnx.Rngs(0))
  ks = jax.random.split(jax.random.key(1), 2)
  support = jax.random.uniform(ks[0], (5, 28, 28, 1))
  query = jax.random.uniform(ks[1], (12, 28, 28, 1))
  full = model(query, context=support)
  perm = np.random.default_rng(0).permutation(12)
  permuted = model(query[perm], context=support)
  np.testing.assert_allclose(permuted, full[perm], rtol=1e-5, atol=1e-5)
  for i in (0, 7):  # Alone, or with a few others removed.
    np.testing.assert_allclose(model(query[i:i + 1], context=support)[0],
                               full[i], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(model(query[3:6], context=support),
                             full[3:6], rtol=1e-5, atol=1e-5)


def test_transductive_query_depends_on_the_other_query_examples():
  """The reference behaviour: the switch above really changes something."""
  model = Conv4(5, num_filters=8, rngs=nnx.Rngs(0))
  query = jax.random.uniform(jax.random.key(2), (12, 28, 28, 1))
  full = model(query)
  assert not np.allclose(model(query[:3])[0], full[0], atol=1e-4)


def test_support_as_its_own_context_is_the_transductive_support_pass():
  model = Conv4(5, num_filters=8, rngs=nnx.Rngs(0))
  support = jax.random.uniform(jax.random.key(3), (5, 28, 28, 1))
  np.testing.assert_allclose(model(support, context=support), model(support),
                             rtol=1e-5, atol=1e-5)


def test_registry_look_ups_are_make_names_the_old_build_names_warn():
  """One verb for a look-up by name, as `make_algorithm`: `make_model` and
  `make_task_problem`; the former `build_*` names still work and say the
  new one."""
  from configs import maml_sine  # pylint: disable=g-import-not-at-top
  config = maml_sine.get_config('quick')
  with pytest.warns(DeprecationWarning,
                    match='models.build_model is now models.make_model'):
    old = models.build_model('mlp', config, input_shape=(1,),
                             num_outputs=1, rngs=nnx.Rngs(0))
  new = models.make_model('mlp', config, input_shape=(1,), num_outputs=1,
                          rngs=nnx.Rngs(0))
  assert type(old) is type(new)
  with pytest.warns(DeprecationWarning, match='tasks.build_task_problem is '
                    'now tasks.make_task_problem'):
    assert tasks.build_task_problem('sinusoid', config).metric == 'mse'
  assert tasks.make_task_problem('sinusoid', config).metric == 'mse'
