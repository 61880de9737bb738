"""`python -m maml_plugin.main` with slow checkpoint commits (test helper).

  KILL_TEST_SAVE_DELAY=0.5 python tests/kill_target.py --config=... --workdir=...

Orbax writes a checkpoint into a temporary folder and makes it final with a
rename (or a commit file); this helper sleeps just before that last move, so
a test can SIGKILL the run while a save is in flight. Production code is not
touched: the patch lives only in this process.
"""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from orbax.checkpoint._src.path import atomicity

from maml_plugin import main

DELAY = float(os.environ.get('KILL_TEST_SAVE_DELAY', '0'))


def _slowed(finalize):
  async def slow_finalize(self, *args, **kwargs):
    await asyncio.sleep(DELAY)
    return await finalize(self, *args, **kwargs)
  return slow_finalize


for cls in (atomicity.AtomicRenameTemporaryPath,
            atomicity.CommitFileTemporaryPath):
  cls.finalize = _slowed(cls.finalize)

if __name__ == '__main__':
  app.run(main.main, flags_parser=main.parse_flags)
