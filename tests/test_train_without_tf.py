"""benchmarks/train_without_tf.py: the CLU writer it substitutes where
TensorFlow is absent writes what CLU's TensorFlow writer writes."""

import glob
import os
import subprocess
import sys
import textwrap

from tensorboard.backend.event_processing import event_file_loader
from tensorboard.util import tensor_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Writes the same scalars and texts through CLU's default writer.
_WRITE = textwrap.dedent("""
    import sys
    from clu import metric_writers
    w = metric_writers.create_default_writer(sys.argv[1], asynchronous=False)
    w.write_hparams({'meta_lr': 0.001})
    w.write_scalars(10, {'eval/accuracy_step1_mean': 0.25, 'steps_per_sec': 3})
    w.write_scalars(20, {'eval/accuracy_step1_mean': 0.75})
    w.write_texts(20, {'note': 'resumed'})
    w.close()
""")


def _events(workdir):
  """{(tag, step): (plugin name, value)} over the workdir's event files."""
  out = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents*')):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        if plugin not in ('scalars', 'text'):
          continue  # hparams: only the TensorFlow writer writes them.
        array = tensor_util.make_ndarray(value.tensor)
        item = array.item()
        if isinstance(item, bytes):
          item = item.decode()
        out[(value.tag, event.step)] = (plugin, item)
  return out


def _write(workdir, without_tf):
  prelude = ''
  if without_tf:
    prelude = textwrap.dedent(f"""
        import sys
        sys.modules['tensorflow'] = None  # import tensorflow fails
        sys.path.insert(0, {os.path.join(ROOT, 'benchmarks')!r})
        import train_without_tf
        train_without_tf._install_tf_free_summary_writer()
    """)
  subprocess.run([sys.executable, '-c', prelude + _WRITE, workdir],
                 check=True, cwd=ROOT, capture_output=True, timeout=300)


def test_tf_free_writer_matches_clu_tensorflow_writer(tmp_path):
  with_tf, without_tf = str(tmp_path / 'tf'), str(tmp_path / 'no_tf')
  _write(with_tf, without_tf=False)
  _write(without_tf, without_tf=True)
  expected = _events(with_tf)
  assert expected[('eval/accuracy_step1_mean', 20)] == ('scalars', 0.75)
  got = _events(without_tf)
  assert set(got) == set(expected)
  for key, (plugin, value) in expected.items():
    assert got[key][0] == plugin, key
    if isinstance(value, str):
      assert got[key][1] == value, key
    else:
      assert abs(got[key][1] - value) < 1e-6, key


def test_without_tensorflow_clu_fails_unless_substituted():
  """The substitution is needed: without it CLU's writers need TensorFlow."""
  code = ("import sys; sys.modules['tensorflow'] = None\n"
          "from clu import metric_writers\n")
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'tensorflow' in result.stderr
