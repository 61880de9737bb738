"""One timed run of the real trainer, for the result scripts.

  report, seconds = trainer_runs.timed_run(config, workdir)
"""

import json
import os
import time

from maml_plugin import train


def timed_run(config, workdir: str) -> tuple[dict, float]:
  """`train_and_evaluate(config, workdir)`: its evaluation.json and wall s."""
  start = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - start
  with open(os.path.join(workdir, 'evaluation.json')) as f:
    return json.load(f), seconds
