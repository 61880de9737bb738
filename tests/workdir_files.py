"""What a workdir holds, byte for byte (test helper)."""

import os


def snapshot(directory: str) -> dict[str, bytes]:
  """``{relative path: contents}`` of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out
