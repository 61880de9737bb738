"""The default install has no TensorFlow: the Omniglot TFDS builder builds
and the trainer reads its data, trains and writes TensorBoard event files,
with ``import tensorflow`` failing (`tests/without_tensorflow.py`); what
truly needs TensorFlow says so in one line."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from maml_plugin import tf_optional
from tests import event_files
from tests import without_tensorflow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data')

# Builds omniglot_tasks/lake (about 32,000 images) as the default install
# can, then checks that nothing imported TensorFlow.
_BUILD = textwrap.dedent("""
    import sys
    import tensorflow_datasets as tfds
    import maml_plugin.tasks
    builder = tfds.builder('omniglot_tasks/lake', data_dir=sys.argv[1])
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=sys.argv[2]))
    print(builder.info.file_format.value)
    assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'
""")


def _run(args, env, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900, **kwargs)


@pytest.fixture(scope='module')
def no_tf(tmp_path_factory):
  return without_tensorflow.environment(tmp_path_factory.mktemp('site'))


@pytest.fixture(scope='module')
def omniglot_tfds(tmp_path_factory, no_tf):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  proc = _run(['-c', _BUILD, data_dir, SHARED_DATA], no_tf)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.splitlines()[-1] == 'array_record', proc.stdout
  return data_dir


def test_the_helper_hides_tensorflow(no_tf):
  proc = _run(['-c', 'import tensorflow'], no_tf)
  assert 'ModuleNotFoundError' in proc.stderr, proc.stderr


def test_omniglot_tfds_trains_without_tensorflow(omniglot_tfds, no_tf,
                                                 tmp_path):
  """The Omniglot builder's array_record files, built without TensorFlow,
  read by `tfds.data_source` in `arrays_from_tfds`, train configs/maml_tfds
  quick to the end with nothing on stderr (no TensorFlow banner, no
  warning), and the event files hold its evaluation scalars."""
  workdir = str(tmp_path / 'work')
  proc = _run(['-m', 'maml_plugin.main', '--config=configs/maml_tfds.py:quick',
               '--config.dataset=omniglot_tasks/lake',
               f'--config.data_dir={omniglot_tfds}',
               '--config.train_split=background',
               '--config.eval_split=evaluation', f'--workdir={workdir}'], no_tf)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr == '', proc.stderr[-3000:]
  scalars = event_files.read_scalars(workdir)
  evaluated = {step for tag, step in scalars if tag.startswith('eval/')}
  assert evaluated == {20}, sorted(scalars)
  assert ('eval/accuracy_step2', 20) in scalars, sorted(scalars)


def test_sine_quick_run_and_help_import_no_tensorflow(no_tf, tmp_path):
  """README's command on the quick config, and --help, where TensorFlow
  is absent."""
  workdir = str(tmp_path / 'sine')
  proc = _run(['-m', 'maml_plugin.main', '--config=configs/maml_sine.py:quick',
               '--config.num_train_steps=20', '--config.steps_per_call=10',
               '--config.eval_every_steps=20', '--config.num_eval_tasks=5',
               f'--workdir={workdir}'], no_tf)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr == '', proc.stderr[-3000:]
  assert ('eval/mse_step1', 20) in event_files.read_scalars(workdir)
  proc = _run(['-m', 'maml_plugin.main', '--help'], no_tf)
  assert proc.returncode == 0 and '--workdir' in proc.stdout, proc.stderr


_READ_TFRECORD = textwrap.dedent("""
    import sys
    from maml_plugin.tasks import episodic
    try:
      episodic.arrays_from_tfds('sinusoid_tasks/shots5', 'test',
                                data_dir=sys.argv[1], image_key='support',
                                label_key='amplitude')
    except episodic.EpisodeError as e:
      print(e)
""")


@pytest.mark.skipif(not tf_optional.installed(),
                    reason='writing tfrecord files needs TensorFlow')
def test_tfrecord_files_without_tensorflow_name_the_extra(tmp_path, no_tf):
  """A dataset prepared as tfrecord (TFDS's default where TensorFlow is
  installed) cannot be read without it: one line naming the extra and the
  array_record alternative."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import maml_plugin.tasks  # pylint: disable=g-import-not-at-top,unused-import
  tfds.builder('sinusoid_tasks/shots5', data_dir=str(tmp_path)
               ).download_and_prepare()
  proc = _run(['-c', _READ_TFRECORD, str(tmp_path)], no_tf)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout
  assert "pip install 'maml_plugin[tf]'" in lines[0]
  assert 'tfrecord' in lines[0] and "file_format='array_record'" in lines[0]


def _import_lines(block: str) -> str:
  """The import statements of a code block (its top-level, one-line ones)."""
  return '\n'.join(line for line in block.splitlines()
                   if re.match(r'(import|from) \S', line))


def test_every_doc_examples_imports_work_without_tensorflow(no_tf):
  """What a user of the default install copies: each python block of
  README.md and docs/*.md imports without TensorFlow (CLU's writers
  imported before maml_plugin failed there). Each block that imports CLU
  in a fresh process (once maml_plugin is imported CLU's writers import);
  the others together."""
  pages = ['README.md'] + sorted(
      os.path.join('docs', n) for n in os.listdir(os.path.join(REPO, 'docs'))
      if n.endswith('.md'))
  blocks = []
  for page in pages:
    with open(os.path.join(REPO, page), encoding='utf-8') as f:
      blocks += [(page, _import_lines(b)) for b in
                 re.findall(r'```python\n(.*?)```', f.read(), re.S)]
  assert len(blocks) >= 10, blocks
  with_clu = [b for b in blocks if re.search(r'^(from|import) clu', b[1], re.M)]
  assert with_clu, 'no example imports CLU'
  check = "\nimport sys; assert 'tensorflow' not in sys.modules\n"
  for page, imports in with_clu + [
      ('the others', '\n'.join(b for _, b in blocks))]:
    proc = _run(['-c', imports + check], no_tf)
    assert proc.returncode == 0, (page, imports, proc.stderr[-2000:])
