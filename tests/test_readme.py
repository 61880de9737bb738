"""README's commands and the loop examples of README and docs/other_loops.md
are what they claim."""

import os
import re

import jax
import numpy as np
import pytest

from maml_plugin import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _block_after(marker: str, page: str = 'README.md') -> str:
  with open(os.path.join(REPO, page)) as f:
    text = f.read()
  match = re.search(re.escape(marker) + r'\s*```\w*\n(.*?)```', text, re.S)
  assert match, f'no code block after {marker} in {page}'
  return match.group(1)


OTHER_LOOPS = os.path.join('docs', 'other_loops.md')


def test_own_loop_example_runs_and_meta_learns(capsys):
  namespace = {}
  exec(compile(_block_after('<!-- own-loop-example -->'), 'README.md',
               'exec'), namespace)  # pylint: disable=exec-used
  metrics = namespace['metrics'].compute()
  assert int(namespace['state'].step) == 500
  # After 500 meta-steps one inner step already helps on fresh tasks.
  assert float(metrics['query_loss_after']) < float(
      metrics['query_loss_before'])
  assert 'query_loss_after' in capsys.readouterr().out


def test_own_model_example_keeps_batch_norm_statistics(capsys):
  namespace = {}
  exec(compile(_block_after('<!-- own-model-example -->'), 'README.md',
               'exec'), namespace)  # pylint: disable=exec-used
  net, state = namespace['net'], namespace['state']
  assert int(state.step) == 300
  metrics = namespace['metrics'].compute()
  assert float(metrics['query_loss_after']) < float(
      metrics['query_loss_before'])
  # The running averages moved from their initial zeros, and the module
  # holds what the train state holds.
  mean = state.model_state['norm']['mean'].value
  assert float(abs(mean).max()) > 0
  assert (net.norm.mean.value == mean).all()
  assert capsys.readouterr().out.strip()


def test_ci_runs_the_readme_test_command():
  command = _block_after('<!-- test-command -->').strip()
  assert 'pytest' in command and 'pip install' in command
  with open(os.path.join(REPO, '.ci', 'run')) as f:
    assert '<!-- test-command -->' in f.read()


def _own_loop_setup(steps: int) -> dict:
  """The own-loop example's namespace, its loop cut to `steps` steps."""
  block = _block_after('<!-- own-loop-example -->')
  assert 'range(1, 501)' in block
  namespace = {}
  exec(compile(block.replace('range(1, 501)', f'range(1, {steps + 1})'),
               'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


def test_own_loop_example_loss_refuses_targets_that_would_broadcast():
  """One task's targets [10] against its predictions [10, 1] (the loss
  sees one task; a meta-batch's [25, 10] against [25, 10, 1] the same):
  pins the example's bare ``jnp.mean((prediction - y) ** 2)``, which
  broadcast them to [10, 10] and trained on that without a word."""
  namespace = _own_loop_setup(steps=1)
  x = np.zeros((10, 1), np.float32)
  with pytest.raises(ValueError, match=r'targets of shape \(10,\) against '
                     r'predictions of shape \(10, 1\) would broadcast'):
    namespace['loss_fn'](namespace['state'].params, {'x': x, 'y': x[:, 0]})


# A task loss in an example: a mean of squared differences, spelt out.
_BARE_MSE = re.compile(r'jnp\.mean\(\(.*\)\s*\*\*\s*2\s*\)')


def test_no_example_spells_out_a_squared_error_that_can_broadcast():
  """Every page's examples use `maml_plugin.losses.mse`, which checks the
  shapes; users copy the examples' losses."""
  pages = ['README.md'] + sorted(
      os.path.join('docs', n) for n in os.listdir(os.path.join(REPO, 'docs'))
      if n.endswith('.md'))
  found = []
  for page in pages:
    with open(os.path.join(REPO, page)) as f:
      found += [f'{page}:{i}: {line.strip()}'
                for i, line in enumerate(f, 1) if _BARE_MSE.search(line)]
  assert not found, '\n'.join(found)


_MSE_LINE = (r'held-out MSE at step (\d+): ([\d.]+) before adapting, ([\d.]+) '
             r'after 1 step, ([\d.]+) after 10')


def test_clu_actions_example_runs_as_written_and_prints_what_it_shows(
    capsys):
  """docs/other_loops.md's CLU loop, complete as written: an evaluator of
  a plain loss on held-out tasks, our actions beside CLU's, a checkpoint;
  it prints what the page shows (adapting helps), up to rounding on
  another CPU."""
  exec(compile(_block_after('<!-- clu-actions-example -->', OTHER_LOOPS),
               OTHER_LOOPS, 'exec'), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  with open(os.path.join(REPO, OTHER_LOOPS)) as f:
    shown = f.read().split('<!-- clu-actions-example -->')[1]
  got, want = re.search(_MSE_LINE, printed), re.search(_MSE_LINE, shown)
  assert got and want, printed
  assert got.group(1) == want.group(1) == '600'
  before, one, ten = map(float, got.groups()[1:])
  assert ten < one < before, printed
  np.testing.assert_allclose([before, one, ten],
                             [float(v) for v in want.groups()[1:]], atol=0.1)
  assert 'checkpoints: [300, 600]' in printed and (
      'checkpoints: [300, 600]' in shown)


def test_train_state_example_trains_saves_and_resumes(capsys):
  """docs/other_loops.md's Flax `TrainState` example, complete as written:
  the second `train` resumes at the first one's last checkpoint, and
  adapting helps in what it prints."""
  namespace = {}
  exec(compile(_block_after('<!-- train-state-example -->', OTHER_LOOPS),
               OTHER_LOOPS, 'exec'), namespace)  # pylint: disable=exec-used
  state = namespace['state']
  assert type(state).__name__ == 'TrainState' and int(state.step) == 300
  printed = capsys.readouterr().out
  assert printed.count('starting at step') == 2
  assert 'starting at step 200' in printed, printed
  steps = checkpointing.create_manager(namespace['workdir'], max_to_keep=3)
  assert steps.all_steps() == [100, 200, 300]
  steps.close()
  for before, after in re.findall(
      r'query loss ([\d.]+) before adapting, ([\d.]+) after', printed):
    assert float(after) < float(before), printed


def test_nnx_loop_example_trains_the_module(capsys):
  namespace = {}
  exec(compile(_block_after('<!-- nnx-loop-example -->', OTHER_LOOPS),
               OTHER_LOOPS, 'exec'), namespace)  # pylint: disable=exec-used
  assert int(namespace['optimizer'].step[...]) == 100
  metrics = namespace['metrics'].compute()
  assert all(np.isfinite(float(v)) for v in metrics.values())
  fresh = namespace['Model'](rngs=namespace['nnx'].Rngs(0))
  trained = namespace['nnx'].state(namespace['model'], namespace['nnx'].Param)
  assert not np.allclose(jax.tree.leaves(trained)[0],
                         jax.tree.leaves(namespace['nnx'].state(
                             fresh, namespace['nnx'].Param))[0])
  assert 'query_loss_after' in capsys.readouterr().out
