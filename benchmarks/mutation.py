"""Mutation testing: do the fast tests notice small bugs in the core modules?

Usage (needs ``pip install coverage``)::

  python benchmarks/mutation.py --list                    # modules, their tests
  python benchmarks/mutation.py --sample 20               # 20 mutants per module
  python benchmarks/mutation.py --module guards --module evaluation
  python benchmarks/mutation.py --module core --sample 10 --seed 1 --json out.json
  git worktree add /tmp/base <older commit>
  python benchmarks/mutation.py --sample 25 --baseline /tmp/base   # before/after

A mutant is one small change to one module's source, the kind of bug a
reviewer worries about: an arithmetic sign flipped (``+`` <-> ``-``,
``*`` <-> ``/``, a unary minus dropped), a comparison or boolean operator
swapped (``<`` <-> ``<=``, ``==`` <-> ``!=``, ``and`` <-> ``or``,
``&`` <-> ``|``), an integer constant off by one, a term dropped from a
sum (``a + b`` -> ``a``), the first two arguments of a call swapped, a
``True``/``False`` default flipped. Code in error messages, log calls and
docstrings is not mutated (a changed message is not a changed result).

Per-line test selection: the module group's tests (`MODULES`) first run
once under coverage, with one context per test phase and per fixture, which
gives the map line -> tests that execute it (JAX traces Python under jit,
so lines of jitted functions count where they are traced; a line run by a
module-scoped fixture maps to every test that requests the fixture, a line
run at import to every test). The map is cached (``--cache``) under a hash
of the package and the test folder. Each mutant is written into a private
copy of the working tree and only the tests that execute its lines run,
with ``pytest -x`` in a process forked from a parent that has already
imported JAX, Flax, optax and orbax (the import alone takes seconds). A run
that fails or crashes kills the mutant. A mutant on a line no test executes
is "not covered"; one whose run passes the time limit is a "timeout"; both
are counted and printed apart, and neither counts as killed. Outcomes are
cached too, under the mutated source and the selected tests' files, so a
rerun after adding tests only runs what those tests change.

Mutants no test can tell from the original (`EQUIVALENT`, each with the
reason, and changes inside annotations that are never evaluated) are named,
not run (``--run-equivalent`` runs them), and left out of the score, which
per module group is killed / (mutants - equivalent). `--sample N` draws N
mutants per module group (seeded by `--seed`, the same draw for the same
source). With `--baseline`, each mutant first meets the baseline's tests
(the "before" column; this tree's tests keep the baseline's, so a mutant
killed there counts as killed after too). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Module group -> (source files, the fast tests that cover them). Tests are
# given most-discriminating first: `pytest -x` stops at the first failure.
MODULES = {
    'core': (['maml_plugin/core.py'],
             ['tests/test_core.py', 'tests/test_trainer_plumbing.py::'
              'test_task_batch_j_holds_tasks_j_j_plus_n_and_so_on',
              'tests/algorithms/test_maml.py', 'tests/test_nnx_state.py',
              'tests/test_algorithms.py']),
    'train_steps': (['maml_plugin/algorithms/*.py'],
                    ['tests/algorithms', 'tests/test_algorithms.py',
                     'tests/test_per_step_bn.py',
                     'tests/test_nnx_state.py']),
    'trainer': (['maml_plugin/train.py', 'maml_plugin/components.py'],
                ['tests/test_trainer_plumbing.py',
                 'tests/test_field_boundaries.py', 'tests/test_train.py']),
    'evaluation': (['maml_plugin/evaluation.py'],
                   ['tests/test_report_numbers.py',
                    'tests/test_evaluation.py']),
    'checkpointing': (['maml_plugin/checkpointing.py'],
                      ['tests/test_checkpointing.py',
                       'tests/test_trainer_plumbing.py',
                       'tests/test_train.py']),
    'guards': (['maml_plugin/guards.py'],
               ['tests/test_guards.py', 'tests/test_trainer_plumbing.py']),
    'config_validation': (['maml_plugin/config_validation.py'],
                          ['tests/test_config.py',
                           'tests/test_field_boundaries.py']),
    'losses': (['maml_plugin/losses.py'],
               ['tests/test_checks.py', 'tests/test_evaluation.py']),
    'jaxline': (['maml_plugin/jaxline_experiment.py'],
                ['tests/test_jaxline_experiment.py']),
    'nnx_bridge': (['maml_plugin/nnx_bridge.py'],
                   ['tests/test_nnx_state.py']),
    'checks': (['maml_plugin/checks.py'], ['tests/test_checks.py']),
}

# Libraries the forked test processes find already imported.
PRELOAD = ('numpy', 'scipy.stats', 'jax', 'jax.numpy', 'flax', 'flax.nnx',
           'optax', 'orbax.checkpoint', 'clu.metric_writers',
           'clu.periodic_actions', 'ml_collections', 'absl.logging',
           'matplotlib', 'pytest')

# Calls whose arguments are messages, not results.
_MESSAGE_CALLS = ('logging', 'warnings', 'print')

_SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div,
               ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
               ast.Mod: ast.FloorDiv, ast.BitAnd: ast.BitOr,
               ast.BitOr: ast.BitAnd, ast.Pow: ast.Mult}
_SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE,
             ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
             ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn,
             ast.NotIn: ast.In}
_SWAP_BOOL = {ast.And: ast.Or, ast.Or: ast.And}
# Calls whose first two arguments commute: swapping them is no mutant.
_SYMMETRIC = ('max', 'min', 'jnp.maximum', 'jnp.minimum', 'np.maximum',
              'np.minimum', 'jnp.logical_and', 'jnp.logical_or')


def _swappable(arg) -> bool:
  """A value, not a literal, a dtype or a star: swapping it with another
  value is a plausible bug rather than a call that cannot run."""
  if isinstance(arg, (ast.Constant, ast.Tuple, ast.List, ast.Starred,
                      ast.Dict, ast.Lambda)):
    return False
  return not (isinstance(arg, ast.Attribute)
              and arg.attr.rstrip('0123456789') != arg.attr)


@dataclasses.dataclass(frozen=True)
class Mutant:
  path: str      # relative to the repository
  index: int     # the site's position in `_sites` order
  kind: str
  line: int
  description: str
  # The lines whose execution runs the mutated code: the node's own lines
  # and the first line of the statement holding it (a tracer reports a
  # statement spread over several lines on its first line or on each).
  lines: tuple[int, ...] = ()
  code: str = ''  # the original line, stripped (names equivalent mutants)
  # In a type annotation of a module with ``from __future__ import
  # annotations``: never evaluated, so equivalent.
  in_annotation: bool = False


def _is_docstring(node, parent) -> bool:
  return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
          and isinstance(node.value.value, str))


def _call_name(call: ast.Call) -> str:
  f = call.func
  parts = []
  while isinstance(f, ast.Attribute):
    parts.append(f.attr)
    f = f.value
  if isinstance(f, ast.Name):
    parts.append(f.id)
  return '.'.join(reversed(parts))


def _skipped_subtrees(tree) -> set[int]:
  """ids of nodes whose subtree is not mutated: messages and docstrings."""
  skip = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.JoinedStr, ast.Raise, ast.Assert)):
      skip.add(id(node))
    elif isinstance(node, ast.Call) and _call_name(node).split('.')[0] in (
        _MESSAGE_CALLS):
      skip.add(id(node))
    elif _is_docstring(node, None):
      skip.add(id(node))
  return skip


def _walk(tree):
  """Nodes in a fixed order, skipping the subtrees `_skipped_subtrees` names."""
  skip = _skipped_subtrees(tree)
  stack = [tree]
  while stack:
    node = stack.pop()
    if id(node) in skip:
      continue
    yield node
    stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _sites(tree):
  """``(node_position, kind, description)`` for every mutation in `tree`."""
  out = []
  for pos, node in enumerate(_walk(tree)):
    if isinstance(node, ast.BinOp) and type(node.op) in _SWAP_BINOP:
      new = _SWAP_BINOP[type(node.op)].__name__
      out.append((pos, 'binop', f'{type(node.op).__name__} -> {new}'))
      if isinstance(node.op, (ast.Add, ast.Sub)):
        out.append((pos, 'drop_right', f'drop the right term of '
                    f'{type(node.op).__name__}'))
    elif isinstance(node, ast.AugAssign) and type(node.op) in _SWAP_BINOP:
      new = _SWAP_BINOP[type(node.op)].__name__
      out.append((pos, 'augassign', f'{type(node.op).__name__}= -> {new}='))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op,
                                                      (ast.USub, ast.Not,
                                                       ast.Invert)):
      out.append((pos, 'unary', f'drop {type(node.op).__name__}'))
    elif isinstance(node, ast.Compare) and type(node.ops[0]) in _SWAP_CMP:
      new = _SWAP_CMP[type(node.ops[0])].__name__
      out.append((pos, 'compare', f'{type(node.ops[0]).__name__} -> {new}'))
    elif isinstance(node, ast.BoolOp):
      new = _SWAP_BOOL[type(node.op)].__name__
      out.append((pos, 'boolop', f'{type(node.op).__name__} -> {new}'))
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
      out.append((pos, 'bool', f'{node.value} -> {not node.value}'))
    elif isinstance(node, ast.Constant) and type(node.value) is int:
      out.append((pos, 'const', f'{node.value} -> {node.value + 1}'))
    elif (isinstance(node, ast.Call) and len(node.args) >= 2
          and _call_name(node) not in _SYMMETRIC
          and all(_swappable(a) for a in node.args[:2])):
      out.append((pos, 'swap_args', f'swap the first two arguments of '
                  f'{_call_name(node) or "a call"}'))
  return out


def _apply(tree, pos: int, kind: str):
  """A copy of `tree` with the mutation `kind` at node position `pos`."""
  tree = copy.deepcopy(tree)
  node = list(_walk(tree))[pos]
  if kind in ('binop', 'augassign'):
    node.op = _SWAP_BINOP[type(node.op)]()
  elif kind == 'drop_right':
    return _replace(tree, node, node.left)
  elif kind == 'unary':
    return _replace(tree, node, node.operand)
  elif kind == 'compare':
    node.ops[0] = _SWAP_CMP[type(node.ops[0])]()
  elif kind == 'boolop':
    node.op = _SWAP_BOOL[type(node.op)]()
  elif kind == 'bool':
    node.value = not node.value
  elif kind == 'const':
    node.value = node.value + 1
  elif kind == 'swap_args':
    node.args[0], node.args[1] = node.args[1], node.args[0]
  return tree


def _replace(tree, old, new):
  for parent in ast.walk(tree):
    for name, value in ast.iter_fields(parent):
      if value is old:
        setattr(parent, name, new)
        return tree
      if isinstance(value, list):
        for i, item in enumerate(value):
          if item is old:
            value[i] = new
            return tree
  raise AssertionError('node not found')


def _statements(tree) -> dict[int, ast.stmt]:
  """id(node) -> the innermost statement holding it."""
  out = {}
  def visit(node, stmt):
    if isinstance(node, ast.stmt):
      stmt = node
    out[id(node)] = stmt
    for child in ast.iter_child_nodes(node):
      visit(child, stmt)
  visit(tree, None)
  return out


def _unevaluated_annotations(tree) -> set[int]:
  """ids of the nodes inside annotations, when the module postpones their
  evaluation (``from __future__ import annotations``)."""
  if not any(isinstance(node, ast.ImportFrom) and node.module == '__future__'
             and any(a.name == 'annotations' for a in node.names)
             for node in tree.body):
    return set()
  roots = []
  for node in ast.walk(tree):
    if isinstance(node, ast.arg) and node.annotation is not None:
      roots.append(node.annotation)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
        node.returns is not None):
      roots.append(node.returns)
    elif isinstance(node, ast.AnnAssign):
      roots.append(node.annotation)
  return {id(n) for root in roots for n in ast.walk(root)}


def mutants_of(path: str) -> list[Mutant]:
  with open(os.path.join(REPO, path)) as f:
    text = f.read()
  tree = ast.parse(text)
  source_lines = text.splitlines()
  nodes = list(_walk(tree))
  stmts = _statements(tree)
  annotations = _unevaluated_annotations(tree)
  out = []
  for i, (pos, kind, desc) in enumerate(_sites(tree)):
    node = nodes[pos]
    line = getattr(node, 'lineno', 0)
    lines = set(range(line, (getattr(node, 'end_lineno', None) or line) + 1))
    if stmts.get(id(node)) is not None:
      lines.add(stmts[id(node)].lineno)
    out.append(Mutant(path, i, kind, line, desc, tuple(sorted(lines)),
                      source_lines[line - 1].strip() if line else '',
                      id(node) in annotations))
  return out


def mutated_source(root: str, mutant: Mutant) -> str | None:
  """The mutant's source, or None where it unparses to the original."""
  with open(os.path.join(root, mutant.path)) as f:
    tree = ast.parse(f.read())
  pos, kind, _ = _sites(tree)[mutant.index]
  new = ast.unparse(_apply(tree, pos, kind))
  return None if new == ast.unparse(tree) else new


def _copy_tree(dest: str) -> None:
  for name in ('maml_plugin', 'tests', 'configs', 'examples'):
    if os.path.isdir(os.path.join(REPO, name)):
      shutil.copytree(os.path.join(REPO, name), os.path.join(dest, name),
                      ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('setup.cfg', 'setup.py', 'pyproject.toml', 'README.md'):
    if os.path.exists(os.path.join(REPO, name)):
      shutil.copy(os.path.join(REPO, name), dest)


def _node_id(nodeid: str) -> str:
  """A pytest node id with object addresses blanked: a parameter shown as
  ``<object object at 0x7f...>`` has another id in each process."""
  return re.sub(r' at 0x[0-9a-f]+', ' at 0x', nodeid)


class _Select:
  """A pytest plugin that keeps only the tests named (by `_node_id`)."""

  def __init__(self, nodes):
    self.nodes = set(nodes)

  def pytest_collection_modifyitems(self, config, items):
    keep = [item for item in items if _node_id(item.nodeid) in self.nodes]
    drop = [item for item in items if _node_id(item.nodeid) not in self.nodes]
    if drop:
      config.hook.pytest_deselected(items=drop)
    items[:] = keep


class _Contexts:
  """A pytest plugin that names the coverage context after what runs: a
  test's setup, call or teardown, or a fixture being built (a module-scoped
  fixture is built once, in the setup of its first test, but every test
  that requests it depends on what it computed)."""

  def __init__(self, cov):
    self.cov = cov
    self.context = ''
    self.fixtures = {}   # node id -> the fixture names it requests
    self.seconds = {}    # node id -> setup + call + teardown seconds
    self.order = []      # node ids in collection order

  def _switch(self, context):
    self.context = context
    self.cov.switch_context(context)

  def pytest_collection_modifyitems(self, items):
    self.order = [_node_id(item.nodeid) for item in items]
    self.fixtures = {_node_id(item.nodeid): list(getattr(item, 'fixturenames', ()))
                     for item in items}

  def pytest_runtest_logreport(self, report):
    node = _node_id(report.nodeid)
    self.seconds[node] = self.seconds.get(node, 0.0) + report.duration

  def _during(self, context):
    saved = self.context
    self._switch(context)
    yield
    self._switch(saved)

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_setup(self, item):
    yield from self._during(f'{_node_id(item.nodeid)}|setup')

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_call(self, item):
    yield from self._during(f'{_node_id(item.nodeid)}|run')

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_teardown(self, item):
    yield from self._during(f'{_node_id(item.nodeid)}|teardown')

  @pytest.hookimpl(hookwrapper=True)
  def pytest_fixture_setup(self, fixturedef):
    yield from self._during(f'fixture|{fixturedef.argname}')


def _run_tests(root: str, tests: list[str], timeout: float,
               coverage_of: list[str] | None = None) -> tuple[str, float]:
  """'passed', 'failed', 'crashed' or 'timeout', and seconds.

  pytest runs in a forked child. With `coverage_of` (paths relative to
  `root`), the child records which test executed which line of those files
  into root/coverage.db and the test list into root/coverage.json.
  """
  start = time.time()
  log = os.path.join(root, 'pytest.log')
  pid = os.fork()
  if pid == 0:  # Child: a fresh interpreter state for the package and tests.
    code = 3
    try:
      fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
      os.dup2(fd, 1)
      os.dup2(fd, 2)
      os.chdir(root)
      sys.path.insert(0, root)
      args = ['-x', '-q', '-p', 'no:cacheprovider', '-W', 'ignore']
      if coverage_of is None:  # `tests` are node ids: run their files.
        files = list(dict.fromkeys(t.split('::')[0] for t in tests))
        code = pytest.main(args + files, plugins=[_Select(tests)])
      else:
        import coverage  # pylint: disable=g-import-not-at-top
        cov = coverage.Coverage(
            data_file=os.path.join(root, 'coverage.db'), config_file=False,
            include=[os.path.join(root, p) for p in coverage_of])
        plugin = _Contexts(cov)
        cov.start()
        try:
          code = pytest.main(args + tests, plugins=[plugin])
        finally:
          cov.stop()
          cov.save()
        with open(os.path.join(root, 'coverage.json'), 'w') as f:
          json.dump(dict(order=plugin.order, fixtures=plugin.fixtures,
                         seconds=plugin.seconds), f)
    except BaseException:  # pylint: disable=broad-except
      import traceback  # pylint: disable=g-import-not-at-top
      traceback.print_exc()
      code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))
  deadline = start + timeout
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      code = os.waitstatus_to_exitcode(status)
      if code in (4, 5):  # Usage error, no tests: not the mutant's doing.
        with open(log) as f:
          raise SystemExit(f'pytest exited {code} on {tests}:\n'
                           f'{f.read()[-3000:]}')
      outcome = ('passed' if code == 0 else 'crashed' if code < 0
                 else 'failed')
      return outcome, time.time() - start
    if time.time() > deadline:
      os.kill(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
      return 'timeout', time.time() - start
    time.sleep(0.2)


def _folder_digest(folder: str) -> str:
  """A hash of every file under `folder` (names and contents)."""
  h = hashlib.sha256()
  for full in sorted(glob.glob(os.path.join(folder, '**', '*'),
                               recursive=True)):
    if os.path.isfile(full) and '__pycache__' not in full:
      h.update(os.path.relpath(full, folder).encode() + b'\0')
      with open(full, 'rb') as f:
        h.update(hashlib.sha256(f.read()).digest())
  return h.hexdigest()


def _digest(*parts: str) -> str:
  return hashlib.sha256('\0'.join(parts).encode()).hexdigest()[:20]


def _tree_digest() -> str:
  """The package and configs as they are (what every test imports)."""
  return _digest(*(_folder_digest(os.path.join(REPO, name))
                   for name in ('maml_plugin', 'configs', 'examples')))


def coverage_map(root: str, paths: list[str], tests: list[str],
                 cache_dir: str) -> dict:
  """Which tests execute which line: ``{'lines': {path: {line: [node ids]}},
  'order': [node ids], 'seconds': {node id: s}, 'seconds_total': s}``.

  Runs `tests` once under coverage (unless a map for the same sources, test
  folder and test list is cached) with one context per test phase and per
  fixture. A line run by a fixture maps to every test that requests the
  fixture; a line run outside any test (at import or collection) maps to
  every test.
  """
  tests_dir = os.path.join(root, tests[0].split('/')[0])
  key = _digest('map v3', _tree_digest(), _folder_digest(tests_dir), *tests)
  cached = os.path.join(cache_dir, f'coverage_{key}.json')
  if os.path.exists(cached):
    with open(cached) as f:
      return json.load(f)
  import coverage  # pylint: disable=g-import-not-at-top
  for name in ('coverage.db', 'coverage.json'):
    if os.path.exists(os.path.join(root, name)):
      os.remove(os.path.join(root, name))
  outcome, seconds = _run_tests(root, tests, timeout=3600, coverage_of=paths)
  if outcome != 'passed':
    with open(os.path.join(root, 'pytest.log')) as f:
      tail = f.read()[-3000:]
    raise SystemExit(f'the unmutated tests {tests} {outcome}:\n{tail}')
  with open(os.path.join(root, 'coverage.json')) as f:
    meta = json.load(f)
  order = meta['order']
  users = {}
  for node, names in meta['fixtures'].items():
    for name in names:
      users.setdefault(name, []).append(node)

  def nodes_of(context):
    if not context:
      return order
    name, _, phase = context.rpartition('|')
    if context.startswith('fixture|'):
      return users.get(context[len('fixture|'):], [])
    del phase
    return [name]

  data = coverage.CoverageData(os.path.join(root, 'coverage.db'))
  data.read()
  data.set_query_contexts(None)
  lines = {}
  real_root = os.path.realpath(root)
  for measured in data.measured_files():
    rel = os.path.relpath(os.path.realpath(measured), real_root)
    if rel not in paths:
      continue
    per_line = {}
    for line, contexts in data.contexts_by_lineno(measured).items():
      nodes = set()
      for context in contexts:
        nodes.update(nodes_of(context))
      per_line[str(line)] = sorted(nodes, key=order.index)
    lines[rel] = per_line
  # What a test's outcome depends on besides the mutant: the tree, its own
  # file, and the folder's other modules (conftest.py, helpers).
  files = {}
  helpers = hashlib.sha256(_tree_digest().encode())
  top = os.path.dirname(tests_dir)
  for full in sorted(glob.glob(os.path.join(tests_dir, '**', '*'),
                               recursive=True)):
    if not os.path.isfile(full) or '__pycache__' in full:
      continue
    with open(full, 'rb') as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    rel = os.path.relpath(full, top)
    if os.path.basename(full).startswith('test_'):
      files[rel] = digest
    else:
      helpers.update(f'{rel}\0{digest}\0'.encode())
  result = dict(lines=lines, order=order, seconds=meta['seconds'],
                seconds_total=seconds, tests=tests, file_digests=files,
                helpers_digest=helpers.hexdigest())
  os.makedirs(cache_dir, exist_ok=True)
  with open(cached, 'w') as f:
    json.dump(result, f)
  return result


def tests_for(mutant: Mutant, cmap: dict) -> list[str]:
  """The node ids, in collection order, of the tests that execute the
  mutant's lines."""
  per_line = cmap['lines'].get(mutant.path, {})
  nodes = set()
  for line in mutant.lines or (mutant.line,):
    nodes.update(per_line.get(str(line), ()))
  return [n for n in cmap['order'] if n in nodes]


def _run_mutant(root: str, source: str, nodes: list[str], cmap: dict,
                timeout: float | None, cache_dir: str) -> tuple[str, float]:
  """The outcome of `nodes` on the mutated tree; a pass, a failure or a
  crash is kept in `cache_dir` under the mutant's source, the tree, the
  node ids, their test files and the test folder's helper modules, so a
  rerun after adding tests only runs what they change (a timeout is not
  kept: it may be the machine's load)."""
  if not nodes:
    return 'not covered', 0.0
  files = dict.fromkeys(n.split('::')[0] for n in nodes)
  key = _digest(hashlib.sha256(source.encode()).hexdigest(),
                cmap['helpers_digest'],
                *(cmap['file_digests'][f] for f in files), *nodes)
  cached = os.path.join(cache_dir, 'outcomes', key)
  if os.path.exists(cached):
    with open(cached) as f:
      return f.read().strip(), 0.0
  outcome, seconds = _run_tests(root, nodes, _limit(nodes, cmap, timeout))
  if outcome != 'timeout':
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    with open(cached, 'w') as f:
      f.write(outcome)
  return outcome, seconds


def _limit(nodes: list[str], cmap: dict, timeout: float | None) -> float:
  """Seconds a mutant's run may take: `timeout`, or 5x what the selected
  tests took under coverage (itself slower than a plain run), at least
  300 s; a mutant that loops forever still ends, and load does not."""
  if timeout:
    return timeout
  return max(300.0, 5 * sum(cmap['seconds'].get(n, 0.0) for n in nodes))


# Mutants judged equivalent (no test can tell them from the original), by
# (path, the original line stripped, description). They are run like the
# others and printed, but left out of the score's denominator.
_FINITE_TOGETHER = (
    'only whether the value is finite is used (it is printed only when it '
    'is not), and total/count and total*count are finite together for a '
    'positive finite count')
_STEP_AT_LEAST_1 = (
    'a recorded bad step is the state\'s step after the update, at least 1 '
    '(steps count from 0 and each update adds 1), so < 0 and < 1, >= 0, > 0 '
    'and >= 1 agree on every value it takes (-1 or >= 1)')
EQUIVALENT = {
    ('maml_plugin/guards.py', 'loss = metrics.query_loss_after.total / '
     'metrics.query_loss_after.count', 'Div -> Mult'): _FINITE_TOGETHER,
    ('maml_plugin/guards.py', 'grad_norm = metrics.meta_grad_norm.total / '
     'metrics.meta_grad_norm.count', 'Div -> Mult'): _FINITE_TOGETHER,
    ('maml_plugin/guards.py', 'first = (report.first_bad_step < 0) & ~ok',
     '0 -> 1'): _STEP_AT_LEAST_1,
    ('maml_plugin/guards.py', 'if int(report.first_bad_step) >= 0:',
     '0 -> 1'): _STEP_AT_LEAST_1,
    ('maml_plugin/guards.py', 'if int(report.first_bad_step) >= 0:',
     'GtE -> Gt'): _STEP_AT_LEAST_1,
    ('maml_plugin/train.py', "if int(report.first_bad_step) >= 0 and "
     "config.on_nonfinite == 'stop':", '0 -> 1'): _STEP_AT_LEAST_1,
    ('maml_plugin/checkpointing.py',
     "for block in iter(lambda: f.read(1 << 20), b''):", '20 -> 21'):
        'the block size of a read; the digest of the file is the same',
    ('maml_plugin/checkpointing.py', "json.dumps(digests, indent=1, "
     "sort_keys=True) + '\\n')", '1 -> 2'):
        'the indentation of sha256.json; it is read as JSON',
    ('maml_plugin/checkpointing.py', 'enable_async_checkpointing=False))',
     'False -> True'):
        '`save` waits for the write to finish before writing the digests, '
        'asynchronous or not',
    ('maml_plugin/evaluation.py',
     'for k in range(wanted[-1] if wanted else 0):', '0 -> 1'):
        'with no step asked for, one inner step more is computed and '
        'nothing is returned either way',
    ('maml_plugin/evaluation.py',
     "'y_true': np.asarray(sine.sinusoid(x[:, 0], amp, phase)),", '0 -> 1'):
        'x is a JAX array of one column, and JAX clamps the index 1 to 0: '
        'the same column',
}


def equivalent(mutant: Mutant) -> str | None:
  """Why `mutant` is equivalent, or None."""
  if mutant.in_annotation:
    return 'a type annotation, never evaluated (postponed annotations)'
  return EQUIVALENT.get((mutant.path, mutant.code, mutant.description))


def _score(killed: int, run: int, equivalent: int) -> float:
  n = run - equivalent
  return 100.0 * killed / n if n else float('nan')


def run_module(name: str, root: str, *, sample: int | None, seed: int,
               timeout: float | None, verbose: bool, cache_dir: str,
               baseline: bool = False, run_equivalent: bool = False,
               progress=None) -> dict:
  patterns, tests = MODULES[name]
  paths = sorted(os.path.relpath(p, REPO) for pat in patterns
                 for p in glob.glob(os.path.join(REPO, pat)))
  paths = [p for p in paths if not p.endswith('__init__.py')]
  # With a baseline, a mutant first meets the baseline's tests (copied to
  # tests_before/) that execute its line: killed there, it counts as killed
  # before and after (this tree's tests keep the baseline's); surviving, it
  # meets this tree's tests, which decide the score after.
  before = ([t.replace('tests/', 'tests_before/', 1) for t in tests
             if os.path.exists(os.path.join(root, t.replace(
                 'tests/', 'tests_before/', 1).split('::')[0]))]
            if baseline else [])
  tests = [t for t in tests
           if os.path.exists(os.path.join(REPO, t.split('::')[0]))]
  mutants = [m for p in paths for m in mutants_of(p)]
  total = len(mutants)
  if sample is not None and sample < total:
    mutants = random.Random(f'{seed}:{name}').sample(mutants, sample)
    mutants.sort(key=lambda m: (m.path, m.line, m.index))
  start = time.time()
  cmap = coverage_map(root, paths, tests, cache_dir)
  cmap_before = coverage_map(root, paths, before, cache_dir) if before else {}
  print(f'[{name}] {total} mutants in {len(paths)} files, running '
        f'{len(mutants)}; tests {" ".join(tests)}: {len(cmap["order"])} '
        f'tests, {cmap["seconds_total"]:.0f}s under coverage'
        + (f'; baseline {len(cmap_before["order"])} tests' if before
           else '') + f' (maps ready in {time.time() - start:.0f}s)',
        flush=True)
  results = []
  for m in mutants:
    source = mutated_source(REPO, m)
    if source is None:
      continue
    why = equivalent(m)
    if why and not run_equivalent:
      results.append(dict(dataclasses.asdict(m), outcome='equivalent',
                          killed=False, outcome_before='equivalent' if before
                          else None, killed_before=False if before else None,
                          tests_run=0, equivalent=why, seconds=0.0))
      print(f'  equivalent {m.path}:{m.line} {m.description}: {why}',
            flush=True)
      continue
    target = os.path.join(root, m.path)
    with open(os.path.join(REPO, m.path)) as f:
      original = f.read()
    with open(target, 'w') as f:
      f.write(source)
    seconds = 0.0
    outcome_before = None
    try:
      if before:
        outcome_before, seconds = _run_mutant(
            root, source, tests_for(m, cmap_before), cmap_before, timeout,
            cache_dir)
      if outcome_before in ('failed', 'crashed'):
        outcome, selected = outcome_before, None
      else:
        nodes = tests_for(m, cmap)
        selected = len(nodes)
        outcome, more = _run_mutant(root, source, nodes, cmap, timeout,
                                    cache_dir)
        seconds += more
    finally:
      with open(target, 'w') as f:
        f.write(original)
    killed = outcome in ('failed', 'crashed')
    results.append(dict(dataclasses.asdict(m), outcome=outcome,
                        killed=killed, outcome_before=outcome_before,
                        killed_before=(outcome_before in ('failed', 'crashed')
                                       if before else None),
                        tests_run=selected, equivalent=why,
                        seconds=round(seconds, 1)))
    if verbose or not killed or outcome_before not in (None, 'failed',
                                                       'crashed'):
      note = '' if outcome_before is None else f'; before: {outcome_before}'
      print(f'  {"killed " if killed else "SURVIVED"} {m.path}:{m.line} '
            f'{m.description} ({outcome}, {selected} tests, {seconds:.0f}s'
            f'{note})' + (f' [equivalent: {why}]' if why else ''),
            flush=True)
    if progress:
      progress(results)

  def count(key, value=True):
    return sum(r[key] == value for r in results)
  return dict(module=name, total_mutants=total, run=len(results),
              killed=count('killed'),
              killed_before=count('killed_before') if before else None,
              not_covered=count('outcome', 'not covered'),
              not_covered_before=(count('outcome_before', 'not covered')
                                  if before else None),
              timeouts=count('outcome', 'timeout'),
              timeouts_before=(count('outcome_before', 'timeout')
                               if before else None),
              equivalent=sum(bool(r['equivalent']) for r in results),
              survivors=[r for r in results if not r['killed']],
              results=results)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--module', action='append', choices=sorted(MODULES),
                      help='a module group to mutate (repeatable; all)')
  parser.add_argument('--sample', type=int, default=None,
                      help='mutants drawn per module group (default: all)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--timeout', type=float, default=None,
                      help='seconds per mutant run (default: 5x what its '
                      'tests took under coverage, at least 300)')
  parser.add_argument('--json', default=None, help='write the results here')
  parser.add_argument('--baseline', default=None,
                      help='another checkout (e.g. a detached worktree of an '
                      'older commit): also score the mutants against its '
                      'tests, the "before" column')
  parser.add_argument('--cache', default=os.path.join(
      os.path.expanduser('~'), '.cache', 'maml_plugin_mutation'),
                      help='coverage maps and compiled XLA programs are kept '
                      'here between runs (default: %(default)s)')
  parser.add_argument('--run-equivalent', action='store_true',
                      help='also run the mutants named equivalent (by '
                      '`EQUIVALENT` or in a postponed annotation); they stay '
                      'out of the score')
  parser.add_argument('--list', action='store_true',
                      help='print the module groups, mutant counts, tests')
  parser.add_argument('-v', '--verbose', action='store_true',
                      help='print killed mutants too')
  args = parser.parse_args(argv)
  names = args.module or list(MODULES)
  if args.list:
    for name in names:
      patterns, tests = MODULES[name]
      paths = [os.path.relpath(p, REPO) for pat in patterns
               for p in sorted(glob.glob(os.path.join(REPO, pat)))]
      count = sum(len(mutants_of(p)) for p in paths)
      print(f'{name}: {count} mutants; {" ".join(tests)}')
    return
  summary = []
  with tempfile.TemporaryDirectory(prefix='mutation_') as root:
    _copy_tree(root)
    if args.baseline:
      shutil.copytree(os.path.join(args.baseline, 'tests'),
                      os.path.join(root, 'tests_before'),
                      ignore=shutil.ignore_patterns('__pycache__'))
    # Compiled XLA programs persist across the forked runs (and across
    # invocations): a mutant recompiles only the functions it changes.
    os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(args.cache, 'xla')
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    for module in PRELOAD:
      __import__(module)
    os.environ['PYTHONPATH'] = root + os.pathsep + os.environ.get(
        'PYTHONPATH', '')

    def progress(results):
      if args.json:  # Partial results survive an interrupted run.
        with open(args.json + '.partial', 'w') as f:
          json.dump(summary + [dict(module='(running)', results=results)],
                    f, indent=1)

    for name in names:
      summary.append(run_module(name, root, sample=args.sample,
                                seed=args.seed, timeout=args.timeout,
                                verbose=args.verbose, cache_dir=args.cache,
                                baseline=bool(args.baseline),
                                run_equivalent=args.run_equivalent,
                                progress=progress))
  print('\nmodule          mutants  run  equiv  before  after  '
        'not covered  timeouts  score (before)')
  for s in summary:
    base = s['killed_before']
    print(f'{s["module"]:<15} {s["total_mutants"]:>7} {s["run"]:>4} '
          f'{s["equivalent"]:>6} {"-" if base is None else base:>7} '
          f'{s["killed"]:>6} {s["not_covered"]:>12} {s["timeouts"]:>9}  '
          f'{_score(s["killed"], s["run"], s["equivalent"]):5.1f}%'
          + ('' if base is None else
             f' ({_score(base, s["run"], s["equivalent"]):5.1f}%)'))
  for s in summary:
    for r in s['survivors']:
      print(f'survived: {r["path"]}:{r["line"]} {r["description"]} '
            f'({r["outcome"]})'
            + (f' [equivalent: {r["equivalent"]}]' if r['equivalent']
               else ''))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(summary, f, indent=1)


if __name__ == '__main__':
  main()
