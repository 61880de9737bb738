"""README's commands and its "own loop" example are what they claim."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _block_after(marker: str) -> str:
  with open(os.path.join(REPO, 'README.md')) as f:
    text = f.read()
  match = re.search(re.escape(marker) + r'\s*```\w*\n(.*?)```', text, re.S)
  assert match, f'no code block after {marker} in README.md'
  return match.group(1)


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
