"""Reads the scalars a CLU writer put in a workdir's TensorBoard event files."""

import glob
import os

import numpy as np
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.util import tensor_util


def read_scalars(workdir: str) -> dict[tuple[str, int], list[np.ndarray]]:
  """``{(tag, step): [value, ...]}``: every value written, over all files.

  A run killed and restarted writes the steps after its last checkpoint
  again, into a new file; the list holds each write.
  """
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents*'))):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        if value.HasField('tensor'):
          array = tensor_util.make_ndarray(value.tensor)
        elif value.HasField('simple_value'):
          array = np.float32(value.simple_value)
        else:
          continue
        if array.dtype.kind not in 'fiu':
          continue
        out.setdefault((value.tag, event.step), []).append(array)
  return out
