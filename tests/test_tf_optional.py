"""maml_plugin.tf_optional: TensorFlow's start-up lines hidden unless asked
for, and the one line naming the extra where TensorFlow is needed."""

import os
import subprocess
import sys

import pytest

from maml_plugin import tf_optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What TensorFlow prints on stderr when it is imported (twice: TFDS's
# lazy import and CLU's), before any flag is parsed.
BANNER = ('absl::InitializeLog', 'oneDNN custom operations',
          'cpu_feature_guard')


@pytest.mark.parametrize('argv, environ, expected', [
    (['main'], {}, '0'),
    (['main', '--help'], {}, '0'),
    (['main'], {'TF_ENABLE_ONEDNN_OPTS': '1'}, '1'),  # the user's own
    (['main', '--verbosity=0'], {}, None),
    (['main', '--verbosity', '1'], {}, None),
    (['main', '-v=1'], {}, None),
])
def test_native_logs_are_quiet_unless_asked_for(argv, environ, expected):
  tf_optional.quiet_native_logs(argv, environ)
  assert environ.get('TF_ENABLE_ONEDNN_OPTS') == expected


def test_require_names_the_extra_in_one_line(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow', None)  # import fails
  assert not tf_optional.installed()
  with pytest.raises(tf_optional.MissingTensorFlowError) as e:
    tf_optional.require('reading tfrecord files')
  assert str(e.value) == ('reading tfrecord files needs TensorFlow, which is '
                          "not installed: pip install 'maml_plugin[tf]'")


def _help(*flags, **environ):
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_ENABLE_ONEDNN_OPTS', 'TF_CPP_MIN_LOG_LEVEL')}
  env.update(environ)
  proc = subprocess.run([sys.executable, '-m', 'maml_plugin.main', '--help',
                         *flags], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return [l for l in proc.stderr.splitlines() if any(b in l for b in BANNER)]


@pytest.mark.skipif(not tf_optional.installed(),
                    reason='the banner is TensorFlow\'s')
def test_tensorflow_banner_is_hidden_and_verbosity_brings_it_back():
  """Where TensorFlow is installed (CLU imports it), --help prints none of
  its banner; absl's --verbosity shows it again, and so does the user's own
  TF_ENABLE_ONEDNN_OPTS=1. Pins the default set too late (after TensorFlow
  is imported) or not at all, and --verbosity not honoured."""
  assert _help() == []
  if _tensorflow_banner():  # Some CPUs (an AVX2 EPYC) get none by default.
    assert _help('--verbosity=0')
  assert _help(TF_ENABLE_ONEDNN_OPTS='1')


def _tensorflow_banner():
  """The banner lines TensorFlow prints on this machine with its defaults
  when imported after JAX, as the trainer does (oneDNN's is on by default
  only on some CPUs, and once jaxlib has initialised absl's logging
  TensorFlow's INFO lines, the CPU-feature notice, are not printed)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_ENABLE_ONEDNN_OPTS', 'TF_CPP_MIN_LOG_LEVEL')}
  proc = subprocess.run([sys.executable, '-c',
                         'import jax, clu.metric_writers'], env=env,
                        capture_output=True, text=True, timeout=300)
  return [l for l in proc.stderr.splitlines() if any(b in l for b in BANNER)]
