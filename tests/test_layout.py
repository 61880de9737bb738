"""The tree shows the architecture: one registered module per algorithm,
model and task family, no import cycle, old import paths kept, and
the Layout table of docs/layout.md true to the tree."""

import ast
import os
import re
import subprocess
import sys

import pytest

import maml_plugin
from maml_plugin import algorithms
from maml_plugin import models
from maml_plugin import tasks
from tests import layout_checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'maml_plugin')

# Each registry and the folder its entries live in: the entries themselves
# are read from the registries (tests/layout_checks.py), never listed here.
FOLDERS = layout_checks.registry_folders(algorithms, models, tasks)


def _package_modules() -> dict[str, str]:
  """Every module of the package: dotted name -> file."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
        out[dotted.removesuffix('.__init__')] = path
  return out


def _imports_at_import_time(path: str, modules) -> set[str]:
  """The package modules `path` imports when it is imported (module level,
  `try` blocks included; imports inside functions run later)."""
  out = set()
  body = ast.parse(open(path).read()).body
  for node in body + [n for t in body if isinstance(t, ast.Try)
                      for n in t.body]:
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name in modules)
    elif isinstance(node, ast.ImportFrom) and node.module in modules:
      for alias in node.names:
        child = f'{node.module}.{alias.name}'
        out.add(child if child in modules else node.module)
  return out


def test_module_imports_form_no_cycle():
  modules = _package_modules()
  graph = {m: _imports_at_import_time(p, modules) for m, p in modules.items()}
  done, path = set(), []

  def visit(module):
    if module in path:
      cycle = path[path.index(module):] + [module]
      pytest.fail(f'import cycle: {" -> ".join(cycle)}')
    if module in done:
      return
    path.append(module)
    for imported in sorted(graph[module]):
      visit(imported)
    path.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)


ALONE = sorted({*(m for r in FOLDERS for m in layout_checks.entries_of(r).values()),
                'maml_plugin.algorithms.base', 'maml_plugin.models.base',
                'maml_plugin.tasks.base'})


@pytest.mark.parametrize('module', ALONE)
def test_each_module_imports_alone_in_a_fresh_process(module):
  proc = subprocess.run([sys.executable, '-c', f'import {module}'],
                        cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize('registry', FOLDERS, ids=lambda r: r.kind)
def test_each_entry_is_registered_by_its_own_module(registry):
  """Every entry the package registers comes from the module of its own
  name in its folder (``algorithms/fomaml.py`` registers 'fomaml'), one
  entry per module; and the folder holds every registering module."""
  assert layout_checks.one_module_per_entry(registry,
                                            FOLDERS[registry]) == []
  entries = layout_checks.entries_of(registry)
  assert len(set(entries.values())) == len(entries)
  folder = os.path.join(PACKAGE, FOLDERS[registry])
  for name in entries:
    assert os.path.isfile(os.path.join(folder, name + '.py')), name
  # A module that registers an entry but is not imported by its folder's
  # __init__.py (its entry missing from the registry) fails here.
  def registers(name):
    with open(os.path.join(folder, name)) as f:
      return '.register(' in f.read()

  registering = sorted(
      f'maml_plugin.{FOLDERS[registry]}.{n[:-3]}' for n in os.listdir(folder)
      if n.endswith('.py') and n not in ('__init__.py', 'base.py')
      and registers(n))
  assert registering == sorted(entries.values())


@pytest.mark.parametrize('old', sorted(maml_plugin.MOVED_MODULES))
def test_a_removed_module_is_a_one_line_error_naming_its_new_home(old):
  """`maml_plugin.train_steps` (the former home of the algorithms) and
  `maml_plugin.tasks.tfds_builders` are gone; both ways of importing one
  fail in one line that names where the names live now, in a fresh
  process as in this one."""
  package, _, name = old.rpartition('.')
  for statement in (f'import {old}', f'from {package} import {name}'):
    proc = subprocess.run([sys.executable, '-c', statement], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f'ImportError: {old} is gone: import '
                    f'{maml_plugin.MOVED_MODULES[old]}'), proc.stderr
  assert maml_plugin.MOVED_MODULES['maml_plugin.train_steps'] == (
      'maml_plugin.algorithms')


def test_the_package_names_are_the_algorithms_names():
  for name in ('MetaTrainState', 'TRAIN_STEPS', 'make_algorithm',
               'make_train_step'):
    assert getattr(maml_plugin, name) is getattr(algorithms, name)


def _layout_rows() -> list[tuple[list[str], str]]:
  """docs/layout.md's table: (paths of the first column, the row's text)."""
  with open(os.path.join(REPO, 'docs', 'layout.md')) as f:
    section = f.read()
  rows = []
  for line in section.splitlines():
    cells = line.split(' | ')
    if line.startswith('| `') and len(cells) >= 2:
      rows.append((re.findall(r'`([^`]+)`', cells[0]), line))
  return rows


def test_layout_table_matches_the_tree():
  rows = _layout_rows()
  listed = {p for paths, _ in rows for p in paths}
  for path in listed:
    assert os.path.exists(os.path.join(REPO, path)), (
        f'docs/layout.md lists {path}, which does not exist')
  for name in sorted(os.listdir(PACKAGE)):
    path = os.path.join(PACKAGE, name)
    if name.endswith('.py') and name != '__init__.py':
      assert f'maml_plugin/{name}' in listed, (
          f'maml_plugin/{name} is missing from docs/layout.md')
    elif os.path.isdir(path) and name != '__pycache__':
      row = [line for paths, line in rows if f'maml_plugin/{name}/' in paths]
      assert row, f'maml_plugin/{name}/ is missing from docs/layout.md'
      # A registered entry's module is the row's "one per module" (read
      # from the registry); every other module is named in the row.
      entries = {m for r, f in FOLDERS.items() if f == name
                 for m in layout_checks.entries_of(r).values()}
      for module in sorted(os.listdir(path)):
        if (module.endswith('.py') and module != '__init__.py'
            and f'maml_plugin.{name}.{module[:-3]}' not in entries):
          assert f'`{module}`' in row[0], (
              f'maml_plugin/{name}/{module} is not named in its '
              'docs/layout.md row')


def test_layout_numbers_are_the_trees():
  """docs/layout.md's "now" rows (the longest module and function, the
  names of the inner-step count) are what benchmarks/layout_numbers.py
  measures on this tree; after a change, ``python3
  benchmarks/layout_numbers.py --write`` rewrites them."""
  sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
  try:
    import layout_numbers  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  assert layout_numbers.written_rows() == layout_numbers.table_rows(
      layout_numbers.numbers()), (
          'docs/layout.md: run python3 benchmarks/layout_numbers.py --write')
