"""`train_and_evaluate` end to end on the quick config, resume, evaluate."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import maml_sine
from maml_plugin import checkpointing
from maml_plugin import config_validation
from maml_plugin import evaluate
from maml_plugin import train
from maml_plugin import workdir as workdir_lib

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('quick'))
  config = maml_sine.get_config('maml,quick')
  state = train.train_and_evaluate(config, workdir)
  return config, workdir, state


def test_run_writes_report_picture_logs_and_checkpoints(trained):
  config, workdir, state = trained
  assert int(state.step) == config.num_train_steps
  with open(os.path.join(workdir, 'evaluation.json')) as f:
    report = json.load(f)
  assert report['metric'] == 'mse'
  assert report['num_tasks'] == config.num_eval_tasks
  assert report['train_step'] == config.num_train_steps
  assert list(report['inner_steps']) == [str(k) for k in range(11)]
  for v in report['inner_steps'].values():
    assert set(v) == {'mean', 'ci95', 'median', 'nonfinite', 'diverged'}
    assert v['ci95'] > 0 and v['nonfinite'] == 0
  # Adaptation helps even after a short meta-training.
  assert report['inner_steps']['1']['mean'] < report['inner_steps']['0']['mean']
  with open(os.path.join(workdir, 'adaptation.png'), 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(workdir))
  steps = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert str(config.num_train_steps) in steps


def _tree(workdir) -> dict[str, bytes | None]:
  """Every path under `workdir`: a file's bytes, None for a folder."""
  out = {}
  for root, dirs, files in os.walk(workdir):
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), workdir)] = None
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


REPORT_FILES = ('evaluation.json', 'adaptation.png')


def test_evaluate_restores_the_checkpoint_and_changes_nothing(trained):
  """evaluate writes its two report files and nothing else: checkpoints,
  event files and folders byte for byte as they were. Pins a restore or a
  manager that writes into the workdir."""
  config, workdir, state = trained
  before = _tree(workdir)
  os.remove(os.path.join(workdir, 'evaluation.json'))
  report = evaluate.evaluate(config, workdir)
  after = _tree(workdir)
  assert set(after) == set(before)
  assert {k: v for k, v in after.items() if k not in REPORT_FILES} == {
      k: v for k, v in before.items() if k not in REPORT_FILES}
  with open(os.path.join(workdir, 'evaluation.json')) as f:
    assert json.load(f) == json.loads(json.dumps(report))
  assert report['train_step'] == int(state.step)


@pytest.mark.parametrize('contents', ['empty', 'events only',
                                      'empty checkpoints folder'])
def test_evaluate_without_a_checkpoint_writes_nothing(tmp_path, contents):
  """One line naming the workdir; the workdir's tree unchanged. Pins
  orbax's manager creating `<workdir>/checkpoints` when it is opened."""
  workdir = tmp_path / 'work'
  workdir.mkdir()
  if contents == 'events only':
    (workdir / 'events.out.tfevents.1.host').write_bytes(b'x')
  if contents == 'empty checkpoints folder':
    (workdir / 'checkpoints').mkdir()
  before = _tree(workdir)
  with pytest.raises(checkpointing.CheckpointError) as error:
    evaluate.evaluate(maml_sine.get_config('maml,quick'), str(workdir))
  assert str(error.value).startswith(f'no checkpoint in {workdir}: ')
  assert '\n' not in str(error.value)
  assert _tree(workdir) == before


def test_tensorboard_shows_the_scalars_as_scalars(trained):
  """`tensorboard --inspect` lists CLU's scalars under "tensor": TF2's
  summary API stores every scalar as a rank-0 tensor whose metadata names
  the 'scalars' plugin, and TensorBoard's Scalars dashboard serves exactly
  those. Checked here through TensorBoard's own multiplexer, the reader
  behind its UI; pins a writer that would lose the plugin name."""
  from tensorboard.backend.event_processing import (  # pylint: disable=g-import-not-at-top
      plugin_event_multiplexer)
  _, workdir, _ = trained
  multiplexer = plugin_event_multiplexer.EventMultiplexer()
  multiplexer.AddRunsFromDirectory(workdir)
  multiplexer.Reload()
  tags = set(multiplexer.PluginRunToTagToContent('scalars').get('.', {}))
  assert {'train/query_loss_after', 'train/meta_grad_norm', 'steps_per_sec',
          'eval/mse_step1', 'eval/mse_step1_ci95'} <= tags, sorted(tags)
  # And the values are the scalars the writer wrote.
  events = multiplexer.Tensors('.', 'train/query_loss_after')
  assert events and all(e.tensor_proto.dtype and not e.tensor_proto.tensor_shape.dim
                        for e in events)


def test_resumed_run_equals_uninterrupted_run(tmp_path, trained):
  config, _, uninterrupted = trained
  half = maml_sine.get_config('maml,quick')
  half.num_train_steps = config.num_train_steps // 2
  workdir = str(tmp_path / 'resumed')
  first = train.train_and_evaluate(half, workdir)
  assert int(first.step) == half.num_train_steps
  resumed = train.train_and_evaluate(config, workdir)
  assert int(resumed.step) == config.num_train_steps
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


SMALL = dict(num_train_steps=20, checkpoint_every_steps=20,
             eval_every_steps=20, num_eval_tasks=10, eval_num_inner_steps=2,
             num_plot_tasks=0)


def _small(arg: str, **overrides):
  config = maml_sine.get_config(arg)
  config.update(dict(SMALL, **overrides))
  return config


@pytest.fixture(scope='module')
def trained_metasgd(tmp_path_factory):
  """20 steps of Meta-SGD: its state holds learned inner rates."""
  workdir = str(tmp_path_factory.mktemp('metasgd'))
  train.train_and_evaluate(_small('metasgd,quick'), workdir)
  return workdir


def test_evaluate_under_another_train_step_names_the_differing_fields(
    trained_metasgd, caplog):
  """The comparison `main` makes on resume (`workdir.training_changes`),
  in one line with every differing field. Pins "checkpoint ... cannot be
  read (corrupt, truncated or written by another version?): ValueError:
  ... tree structures do not match" after a warning per checkpoint."""
  workdir = trained_metasgd
  before = _tree(workdir)
  caplog.set_level('WARNING')
  with pytest.raises(workdir_lib.WorkdirError) as error:
    evaluate.evaluate(_small('maml,quick'), workdir)
  message = str(error.value)
  assert message.startswith(
      f'the checkpoints in {workdir} do not match this config: it differs '
      'from the one they were trained with (config.json): '
      "config.train_step: 'metasgd' in the workdir, 'maml' given; "), message
  assert message.endswith('; evaluate with the config they were trained '
                          'with'), message
  assert '\n' not in message and 'cannot be read' not in caplog.text
  assert _tree(workdir) == before


def test_evaluate_refuses_an_inner_lr_the_learned_rates_replace(
    trained_metasgd):
  """Pins `--config.inner_lr=0.5` accepted silently on a Meta-SGD workdir,
  whose checkpoint's rates are what evaluation adapts with."""
  with pytest.raises(config_validation.ConfigError) as error:
    evaluate.evaluate(_small('metasgd,quick', inner_lr=0.5), trained_metasgd)
  assert str(error.value) == (
      "config.inner_lr=0.5 would not be used: 'metasgd' keeps its inner "
      "rates in the train state, and evaluation adapts with the checkpoint's "
      "(which started from the workdir's 0.01); evaluate with "
      '--config.inner_lr=0.01, or train with 0.5')


def test_evaluate_with_another_inner_lr_adapts_with_it_where_it_is_used(
    trained, tmp_path):
  """MAML's inner_lr is not in its state: an evaluation at another step
  size is a legitimate question, answered (and answered differently)."""
  config, workdir, _ = trained
  workdir = str(shutil.copytree(workdir, tmp_path / 'copy'))  # Report kept.
  means = []
  for inner_lr in (config.inner_lr, config.inner_lr / 2):
    other = config.copy_and_resolve_references()
    other.update(num_eval_tasks=10, eval_num_inner_steps=1, num_plot_tasks=0,
                 inner_lr=inner_lr)
    means.append(evaluate.evaluate(other, workdir)['inner_steps']['1']['mean'])
  assert means[0] != means[1]
