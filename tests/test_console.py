"""What the commands print: a short default run (results on stdout,
diagnostics on stderr), everything with --verbosity, one line for a
finished run, --help, a misspelt config argument (`maml_plugin.console`);
every evaluation, the final one included, in TensorBoard."""

import json
import os
import re
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from maml_plugin import config_files
from maml_plugin import console
from tests import event_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 100 meta-steps in 10 log intervals, 2 periodic evaluations, a table of
# 0..2 inner steps: the lines that used to grow with the log intervals
# would show up ten times.
TINY = ['--config=configs/maml_sine.py:quick',
        '--config.num_train_steps=100', '--config.steps_per_call=10',
        '--config.log_every_steps=10', '--config.eval_every_steps=50',
        '--config.checkpoint_every_steps=50', '--config.num_eval_tasks=5',
        '--config.eval_num_inner_steps=2']
NUM_EVALS = 2
TABLE_LINES = 2 + 3  # Two header lines, one row per inner step count.
# absl's prefix, e.g. "I1127 03:21:10.604511 139888972880768 main.py:139] ".
ABSL_PREFIX = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ')


def _run(module, args, **kwargs):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600,
                        **kwargs)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('console') / 'work'
  proc = _run('maml_plugin.main', [*TINY, f'--workdir={workdir}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  # A healthy run has nothing to say on stderr: the results are on stdout.
  assert proc.stderr == '', proc.stderr[-3000:]
  return workdir, proc.stdout.strip().splitlines()


def test_default_run_prints_start_progress_table_and_files_only(tiny_run):
  """The line budget: 2 start lines, 1 per evaluation, the table (with its
  title), 1 line naming the files. Pins library noise coming back (the TPU
  probe, orbax's metadata warning, CLU's per-interval metric, steps/s and
  uptime lines, absl's prefixes) and a progress line per log interval."""
  workdir, lines = tiny_run
  budget = 2 + NUM_EVALS + 1 + TABLE_LINES + 1
  assert len(lines) <= budget, '\n'.join(lines)
  text = '\n'.join(lines)
  for noise in ('tpu', 'Metadata file', 'steps_per_sec=', 'uptime=',
                'work unit notes', 'train/query_loss'):
    assert noise not in text, f'{noise!r} in the default output:\n{text}'
  assert not [l for l in lines if ABSL_PREFIX.match(l)], text
  assert lines[0].startswith('config file: configs/maml_sine.py:quick; '
                             f'workdir: {workdir}; 1 cpu device'), text
  assert lines[1] == 'Meta-training from step 0 to 100 (a new run).', text
  progress = [l for l in lines if l.startswith('step ')]
  assert [l.split(',')[0] for l in progress] == ['step 50/100 (50%)',
                                                 'step 100/100 (100%)']
  assert 'held-out mse after 0/1/2 inner steps: ' in progress[0]
  assert 'ETA ' in progress[0] and 'ETA' not in progress[1]
  assert lines[-1].startswith(f'In {workdir}: adaptation.png, checkpoints/ '
                              '(steps 50, 100), config.json, evaluation.json, 1 '
                              'TensorBoard event file'), text


def test_first_rates_count_from_before_the_first_chunk(tiny_run):
  """The first rates (the progress line's, and CLU's `steps_per_sec` in
  TensorBoard, logged every chunk of 10 steps) include the first chunk
  (compiled before it, `train.compile_training`). Pins the clocks starting
  at the first step's hook call, inside the first chunk's burst of hook
  calls: CLU's first rate was then 9 steps over microseconds."""
  workdir, lines = tiny_run
  first = next(l for l in lines if l.startswith('step 50/'))
  rate = float(re.search(r'([\d,.]+) meta-steps/s', first).group(1)
               .replace(',', ''))
  assert 0 < rate < 1e4, first
  scalars = event_files.read_scalars(str(workdir))
  first_logged = float(scalars[('steps_per_sec', 10)][0])
  assert 0 < first_logged < 1e4, first_logged


def test_finished_run_says_so_once_and_verbosity_shows_everything(
    tiny_run):
  """Running a finished run again: one line saying it is complete, the
  table once, no training. Pins the loop running 0 steps and the table
  printed twice; with --verbosity=0 absl's lines come back."""
  workdir, _ = tiny_run
  proc = _run('maml_plugin.main',
              [*TINY, f'--workdir={workdir}', '--verbosity=0'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = proc.stdout + proc.stderr
  assert text.count('Already complete: the checkpoint in ') == 1, text
  assert 'at step 100 of 100' in text
  assert text.count('held-out tasks, checkpoint step 100') == 1, text
  assert 'Meta-training from' not in text
  assert [l for l in text.splitlines() if ABSL_PREFIX.match(l)], text


@pytest.mark.parametrize('module', ['maml_plugin.main',
                                    'maml_plugin.evaluate'])
def test_help_shows_our_flags_and_exits_0(module):
  """Pins absl's --help (exit status 1, every library's flags), and
  TensorFlow's start-up banner on stderr (``WARNING: All log messages
  before absl::InitializeLog() ...``, ``oneDNN custom operations are on
  ...``), printed when it is imported unless TF_ENABLE_ONEDNN_OPTS is set
  (`tf_optional.quiet_native_logs` sets it to 0 unless the user did or
  --verbosity is given); where TensorFlow is absent there is none."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_ENABLE_ONEDNN_OPTS', 'TF_CPP_MIN_LOG_LEVEL')}
  proc = _run(module, ['--help'], env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  banner = [l for l in proc.stderr.splitlines()
            if any(s in l for s in ('absl::InitializeLog', 'oneDNN',
                                    'cpu_feature_guard'))]
  assert not banner, proc.stderr
  assert '--config' in proc.stdout and '--workdir' in proc.stdout
  assert 'tfds' not in proc.stdout.lower() and 'tpu' not in proc.stdout.lower()
  assert len(proc.stdout.splitlines()) < 40, proc.stdout


def test_evaluate_misspelt_config_argument_is_get_configs_sentence():
  """evaluate's flag parser (`config_files.flags_parser`, on flags defined
  as `maml_plugin.evaluate` defines them). Pins the traceback absl's usage
  error printed for a `:arg` that get_config refuses."""
  argv = ['evaluate', '--config=configs/maml_sine.py:quik', '--workdir=w']
  flag_values = flags.FlagValues()
  flags.DEFINE_string('workdir', None, 'workdir', flag_values=flag_values)
  config_flags.DEFINE_config_file('config', None, 'config',
                                  flag_values=flag_values, lock_config=True)
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    with pytest.raises(SystemExit) as exit_info:
      config_files.flags_parser(argv, flag_values)
  finally:
    os.chdir(cwd)
  assert str(exit_info.value.code) == (
      "maml_plugin: bad config: --config=configs/maml_sine.py:quik: "
      "ValueError: get_config arg='quik': must be None or a comma-separated "
      "list of ('quick', 'paper') and one of ('maml', 'fomaml', 'reptile', "
      "'metasgd', 'anil', 'mamlpp', 'imaml')")


def test_format_duration():
  assert console.format_duration(42.4) == '42 s'
  assert console.format_duration(185) == '3 min 05 s'
  assert console.format_duration(2 * 3600 + 7 * 60 + 3) == '2 h 07 min'


def _final_means(workdir) -> dict[int, float]:
  with open(os.path.join(workdir, 'evaluation.json')) as f:
    report = json.load(f)
  return {int(k): v['mean'] for k, v in report['inner_steps'].items()}


def test_the_final_evaluation_is_in_tensorboard(tiny_run):
  """The final table's means are the TensorBoard scalars of the last step
  (the periodic evaluation of the last step is the final one). Pins a final
  evaluation computed apart from what TensorBoard shows."""
  workdir, _ = tiny_run
  scalars = event_files.read_scalars(str(workdir))
  means = _final_means(workdir)
  assert sorted(means) == [0, 1, 2]
  for k, mean in means.items():
    (logged,) = scalars[(f'eval/mse_step{k}', 100)]
    assert float(logged) == pytest.approx(mean, rel=1e-6), k


def test_a_run_shorter_than_eval_every_steps_is_evaluated_in_tensorboard(
    tmp_path):
  """30 meta-steps with evaluations every 50: TensorBoard gets the
  evaluation of step 30 (it used to get none), the progress line shows it,
  and an error goes to stderr alone."""
  workdir = tmp_path / 'short'
  args = [*TINY, f'--workdir={workdir}', '--config.num_train_steps=30',
          '--config.checkpoint_every_steps=30']
  proc = _run('maml_plugin.main', args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr == '', proc.stderr[-3000:]
  progress = [l for l in proc.stdout.splitlines() if l.startswith('step ')]
  assert len(progress) == 1 and progress[0].startswith('step 30/30 (100%)')
  assert 'held-out mse after 0/1/2 inner steps: ' in progress[0]
  scalars = event_files.read_scalars(str(workdir))
  assert sorted(s for t, s in scalars if t == 'eval/mse_step0') == [30]
  for k, mean in _final_means(workdir).items():
    (logged,) = scalars[(f'eval/mse_step{k}', 30)]
    assert float(logged) == pytest.approx(mean, rel=1e-6), k
  # A refusal is a diagnostic: stderr, nothing on stdout.
  proc = _run('maml_plugin.main', [*args, '--config.num_eval_tasks=-1'])
  assert proc.returncode != 0
  assert proc.stdout == '' and proc.stderr.startswith('maml_plugin: '), (
      proc.stdout, proc.stderr)


def test_evaluate_prints_its_table_on_stdout(tiny_run):
  workdir, _ = tiny_run
  proc = _run('maml_plugin.evaluate', [TINY[0], f'--workdir={workdir}',
                                       '--config.num_eval_tasks=5',
                                       '--config.eval_num_inner_steps=2'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr == '', proc.stderr[-3000:]
  assert 'held-out tasks, checkpoint step 100' in proc.stdout



_PRINT_AS_TENSORSTORE_DOES = r"""
import asyncio, sys, threading, types
from maml_plugin import console
console.setup()

def from_c(function, *args):
  # What tensorstore's C++ does with an exception a callback it called
  # raised: PyErr_Print, which calls sys.excepthook with the traceback below
  # the C caller (no Python frame of a caller: tb_next skips this one's).
  try:
    function(*args)
  except BaseException as e:
    sys.excepthook(type(e), e, e.__traceback__.tb_next)

def from_c_unraisable(function, *args):
  # The other way C code reports it: PyErr_WriteUnraisable, which calls
  # sys.unraisablehook ("Exception ignored in: ...").
  try:
    function(*args)
  except BaseException as e:
    sys.unraisablehook(types.SimpleNamespace(
        exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__.tb_next,
        err_msg=None, object=function))

def in_a_thread(function, *args, report=from_c):
  thread = threading.Thread(target=report, args=(function, *args))
  thread.start()
  thread.join()

loop = asyncio.new_event_loop()
loop.close()
in_a_thread(loop.call_soon_threadsafe, print)
from_c(loop.call_soon_threadsafe, print)  # Completed in the main thread.
in_a_thread(loop.call_soon_threadsafe, print, report=from_c_unraisable)
from_c_unraisable(loop.call_soon_threadsafe, print)
print('after the callbacks', flush=True)
def other():
  raise RuntimeError('Event loop is closed')
in_a_thread(other)
loop.call_soon_threadsafe(print)  # A Python caller: not the callback.
"""


def test_a_write_finishing_after_a_failed_save_prints_no_traceback():
  """tensorstore's callback of a write that completes after orbax closed
  the failed save's event loop raises 'Event loop is closed', which its
  thread prints (PyErr_Print) before our one line (a full disk under
  load). Only that one is dropped, whichever thread completes the write:
  the same error raised elsewhere, or by asyncio's check under a Python
  caller, still prints its traceback."""
  proc = subprocess.run([sys.executable, '-c', _PRINT_AS_TENSORSTORE_DOES],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert proc.stdout == 'after the callbacks\n', proc.stderr
  assert proc.stderr.count('Traceback') == 2, proc.stderr
  assert ', in other\nRuntimeError: Event loop is closed' in proc.stderr
  assert proc.stderr.count('in _check_closed') == 1, proc.stderr
