"""TensorFlow is optional: what stands in where it is absent, and the one
line that names the extra where something truly needs it.

The default install has no TensorFlow (``pip install maml_plugin``);
``pip install 'maml_plugin[tf]'`` brings it back. Without it:

- CLU's `metric_writers` package, which `clu.periodic_actions` imports,
  imports its TensorFlow `SummaryWriter` at import time.
  `let_clu_import_without_tensorflow` (called by ``maml_plugin/__init__``)
  registers a stand-in module for it first, whose ``SummaryWriter(logdir)``
  builds our `maml_plugin.tensorboard_writer.TensorBoardWriter`; so CLU
  imports, and CLU's own ``create_default_writer`` writes event files, in a
  loop of your own too. Where TensorFlow is installed CLU is left as it is.
- TFDS builds and reads ``array_record`` files (``tfds.data_source``); its
  ``tfrecord`` files and ``tf.data`` need TensorFlow (`require`)::

    from maml_plugin import tf_optional
    tf_optional.require('reading tfrecord files')  # MissingTensorFlowError

`quiet_native_logs` keeps TensorFlow's C++ start-up banner off
(``WARNING: All log messages before absl::InitializeLog() ...``, ``oneDNN
custom operations are on ...``, the CPU-feature notice) unless the user set
``TF_ENABLE_ONEDNN_OPTS`` or passed absl's ``--verbosity``. This module
imports nothing heavy: it runs first.
"""

import importlib.util
import os
import sys
import types

INSTALL_HINT = "pip install 'maml_plugin[tf]'"
_CLU_SUMMARY_WRITER = 'clu.metric_writers.summary_writer'


class MissingTensorFlowError(ImportError):
  """Something that needs TensorFlow, where it is not installed."""


def installed() -> bool:
  """Whether ``import tensorflow`` can find TensorFlow (without importing
  it: that takes seconds)."""
  try:
    return importlib.util.find_spec('tensorflow') is not None
  except (ImportError, ValueError):  # sys.modules['tensorflow'] = None.
    return False


def require(what: str) -> None:
  """Raises `MissingTensorFlowError` (one line naming `what` and the extra)
  unless TensorFlow is installed."""
  if not installed():
    raise MissingTensorFlowError(
        f'{what} needs TensorFlow, which is not installed: {INSTALL_HINT}')


class _SummaryWriterWithoutTensorFlow:
  """``clu.metric_writers.SummaryWriter`` where TensorFlow is absent: its
  ``SummaryWriter(logdir)`` is a `TensorBoardWriter` (the same event files
  for what it writes; see `maml_plugin.tensorboard_writer`)."""

  def __new__(cls, logdir):
    from maml_plugin import tensorboard_writer  # pylint: disable=g-import-not-at-top
    return tensorboard_writer.TensorBoardWriter(logdir)


def let_clu_import_without_tensorflow() -> None:
  """Where TensorFlow is absent, registers the stand-in for CLU's
  ``clu.metric_writers.summary_writer`` (the module that imports
  TensorFlow), before CLU is imported. Idempotent; does nothing where
  TensorFlow is installed or CLU's writers are imported already."""
  if (_CLU_SUMMARY_WRITER in sys.modules
      or 'clu.metric_writers' in sys.modules or installed()):
    return
  module = types.ModuleType(
      _CLU_SUMMARY_WRITER,
      'Stands in for CLU\'s TensorFlow SummaryWriter (maml_plugin.tf_optional).')
  module.SummaryWriter = _SummaryWriterWithoutTensorFlow
  sys.modules[_CLU_SUMMARY_WRITER] = module


def _asks_for_verbosity(argv) -> bool:
  return any(arg in ('-v', '--verbosity') or arg.startswith(('--verbosity=',
                                                             '-v='))
             for arg in argv[1:])


def quiet_native_logs(argv=None, environ=None) -> None:
  """Sets ``TF_ENABLE_ONEDNN_OPTS=0`` unless it is set or absl's
  ``--verbosity`` is in `argv` (default `sys.argv`).

  TensorFlow (imported by CLU and TFDS where it is installed) logs the
  oneDNN notice at import, through absl's C++ logging before anything
  initialised it, so absl adds its ``InitializeLog`` warning, and the
  CPU-feature notice follows. TensorFlow 2.21 prints these whatever
  ``TF_CPP_MIN_LOG_LEVEL`` says (measured: 1, 2 and 3); without oneDNN's
  kernels none of them is printed. We use TensorFlow for files only
  (TFDS records), never for arithmetic, so turning them off changes no
  result. It has to be set before TensorFlow is imported, so before flags
  are parsed: `argv` is read as it is."""
  argv = sys.argv if argv is None else argv
  environ = os.environ if environ is None else environ
  if not _asks_for_verbosity(argv):
    environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')


class ArrayRecordUnlessTensorFlow:
  """A TFDS builder mix-in: where TensorFlow is absent, `download_and_prepare`
  writes ``array_record`` files (TFDS writes ``tfrecord`` by default, which
  needs TensorFlow), read with ``tfds.data_source``. A `file_format` given
  explicitly is kept."""

  def download_and_prepare(self, *args, file_format=None, **kwargs):
    if file_format is None and not installed():
      file_format = 'array_record'
    return super().download_and_prepare(*args, file_format=file_format,
                                        **kwargs)
