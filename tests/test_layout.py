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
from maml_plugin import train_steps
from tests.package_entries import package_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'maml_plugin')

# Registered name -> the module that registers it: one module per entry.
REGISTERED_BY = {
    algorithms.TRAIN_STEPS: {
        name: f'maml_plugin.algorithms.{name}'
        for name in ('maml', 'fomaml', 'metasgd', 'anil', 'reptile',
                     'mamlpp', 'imaml')},
    models.MODELS: {'mlp': 'maml_plugin.models.mlp',
                    'conv4': 'maml_plugin.models.conv4'},
    tasks.TASKS: {'sinusoid': 'maml_plugin.tasks.sinusoid',
                  'omniglot': 'maml_plugin.tasks.omniglot',
                  'tfds_episodic': 'maml_plugin.tasks.tfds_episodic',
                  'image_folder': 'maml_plugin.tasks.image_folder'},
}


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


ALONE = sorted({*(m for r in REGISTERED_BY.values() for m in r.values()),
                'maml_plugin.algorithms.base', 'maml_plugin.models.base',
                'maml_plugin.tasks.base', 'maml_plugin.train_steps'})


@pytest.mark.parametrize('module', ALONE)
def test_each_module_imports_alone_in_a_fresh_process(module):
  proc = subprocess.run([sys.executable, '-c', f'import {module}'],
                        cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize('registry', REGISTERED_BY,
                         ids=lambda r: r.kind)
def test_each_entry_is_registered_by_its_own_module(registry):
  expected = REGISTERED_BY[registry]
  package_entries = package_names(registry)
  assert sorted(package_entries) == sorted(expected)
  for name, module in expected.items():
    assert registry.lookup(name).__module__ == module


def test_train_steps_is_the_old_path_of_algorithms():
  assert 'maml_plugin.algorithms' in train_steps.__doc__
  for name in ('MetaTrainState', 'MetaAlgorithm', 'TRAIN_STEPS',
               'make_algorithm', 'make_train_step', 'hparam_names',
               'accepts_metric_fn', 'apply_meta_gradient',
               'gradient_train_step', 'split_leaves', 'merge_leaves'):
    assert getattr(train_steps, name) is getattr(algorithms.base, name)
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
      for module in sorted(os.listdir(path)):
        if module.endswith('.py') and module != '__init__.py':
          assert f'`{module}`' in row[0], (
              f'maml_plugin/{name}/{module} is not named in its '
              'docs/layout.md row')
