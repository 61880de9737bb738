"""Adding an algorithm is one file plus one import: a throw-away algorithm
module, copied from `algorithms/fomaml.py` (the template) into a copy of
the repository, is picked up by the layout, contract and docs checks with
no other edit."""

import filecmp
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = 'throwaway'
# What the copy holds: everything docs/layout.md and the tests read.
PARTS = ('maml_plugin', 'tests', 'docs', 'configs', 'examples', 'benchmarks')


def _copy_with_one_more_algorithm(tmp_path) -> str:
  """The repository (package, tests, docs, configs) with `NAME` added the
  documented way: its module, and one import in algorithms/__init__.py."""
  copy = tmp_path / 'repo'
  for part in PARTS:
    shutil.copytree(os.path.join(REPO, part), copy / part,
                    ignore=shutil.ignore_patterns('__pycache__', 'generated',
                                                  '_build'))
  for name in ('setup.py', 'setup.cfg', 'README.md', 'pyproject.toml'):
    shutil.copy(os.path.join(REPO, name), copy / name)
  algorithms = copy / 'maml_plugin' / 'algorithms'
  with open(algorithms / 'fomaml.py') as f:
    template = f.read()
  with open(algorithms / f'{NAME}.py', 'w') as f:
    f.write(template.replace("'fomaml'", repr(NAME)).replace(
        'def make_fomaml', f'def make_{NAME}'))
  with open(algorithms / '__init__.py') as f:
    init = f.read()
  with open(algorithms / '__init__.py', 'w') as f:
    f.write(init.replace(
        'from maml_plugin.algorithms import anil\n',
        'from maml_plugin.algorithms import anil\n'
        f'from maml_plugin.algorithms import {NAME}\n'))
  return str(copy)


def _changed_files(copy: str) -> list[str]:
  """The files of `copy` that differ from this repository's or are new."""
  out = []
  for part in PARTS:
    for folder, dirs, files in os.walk(os.path.join(copy, part)):
      dirs[:] = [d for d in dirs if d not in ('__pycache__', 'generated')]
      for name in files:
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, copy)
        original = os.path.join(REPO, rel)
        if not os.path.exists(original) or not filecmp.cmp(
            path, original, shallow=False):
          out.append(rel)
  return sorted(out)


def _run(args, cwd):
  env = {**os.environ, 'PYTHONPATH': cwd}
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=900)


def test_a_new_algorithm_is_one_file_and_one_import(tmp_path):
  """The layout tests (its own module registers it, the layout table), the
  contract test over every registered train step, the docs' generated API
  pages, and the config variant all see the new entry; the copy differs
  from the repository in exactly two files."""
  copy = _copy_with_one_more_algorithm(tmp_path)
  assert _changed_files(copy) == sorted([
      f'maml_plugin/algorithms/{NAME}.py',
      'maml_plugin/algorithms/__init__.py'])
  proc = _run(['-c', 'from tests import layout_checks; from maml_plugin '
               'import algorithms; print(layout_checks.entries_of('
               f'algorithms.TRAIN_STEPS)[{NAME!r}])'], copy)
  assert proc.stdout.split() == [f'maml_plugin.algorithms.{NAME}'], (
      proc.stderr[-3000:])
  proc = _run(['-m', 'pytest', '-p', 'no:cacheprovider',
               '-p', 'no:xdist', '-p', 'no:benchmark',
               'tests/test_layout.py::test_each_entry_is_registered_by_its_own_module',
               'tests/test_layout.py::test_layout_table_matches_the_tree',
               'tests/test_checks.py::'
               'test_every_registered_step_refuses_a_task_without_its_axis',
               '-k', f'{NAME} or registered_by or layout_table', '-v'], copy)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert (f'test_every_registered_step_refuses_a_task_without_its_axis'
          f'[{NAME}] PASSED') in proc.stdout, proc.stdout[-3000:]
  # The docs: autosummary's own walk of the package writes its page.
  out = tmp_path / 'api'
  proc = _run(['-m', 'sphinx.ext.autosummary.generate', '-t',
               'docs/_templates', '-o', str(out), 'docs/api/index.rst'], copy)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'maml_plugin.algorithms.{NAME}.rst' in os.listdir(out)
  with open(out / f'maml_plugin.algorithms.{NAME}.rst') as f:
    assert f'.. automodule:: maml_plugin.algorithms.{NAME}' in f.read()
  # The flagship config runs it by name, at its defaults.
  proc = _run(['-c', 'from configs import maml_sine; from maml_plugin '
               'import config_validation as v; c = maml_sine.get_config('
               f'"{NAME},quick"); v.validate(c); print(c.train_step)'], copy)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == [NAME]
