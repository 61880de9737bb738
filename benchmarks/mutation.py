"""Mutation testing: do the fast tests notice small bugs in the core modules?

Usage::

  python benchmarks/mutation.py --list                    # modules, their tests
  python benchmarks/mutation.py --sample 20               # 20 mutants per module
  python benchmarks/mutation.py --module guards --module evaluation
  python benchmarks/mutation.py --module core --sample 10 --seed 1 --json out.json

A mutant is one small change to one module's source, the kind of bug a
reviewer worries about: an arithmetic sign flipped (``+`` <-> ``-``,
``*`` <-> ``/``, a unary minus dropped), a comparison or boolean operator
swapped (``<`` <-> ``<=``, ``==`` <-> ``!=``, ``and`` <-> ``or``,
``&`` <-> ``|``), an integer constant off by one, a term dropped from a
sum (``a + b`` -> ``a``), the first two arguments of a call swapped, a
``True``/``False`` default flipped. Each mutant is written into a private
copy of the working tree and the module's fast tests (`MODULES`) run
against it with ``pytest -x`` in a fresh process forked from a parent that
has already imported JAX, Flax, optax and orbax (the import alone takes
seconds); a mutant that makes a test fail or time out is killed, one that
passes every test survives and is printed with its line. Code in error
messages, log calls and docstrings is not mutated (a changed message is
not a changed result).

The score per module is killed / mutants. `--sample N` draws N mutants per
module (seeded by `--seed`, the same draw for the same source), since a
full run takes hours on a CPU: each mutant pays a pytest start and the
tests' XLA compilations. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import glob
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Module group -> (source files, the fast tests that cover them). Tests are
# given most-discriminating first: `pytest -x` stops at the first failure.
MODULES = {
    'core': (['maml_plugin/core.py'],
             ['tests/test_core.py', 'tests/test_trainer_plumbing.py::'
              'test_task_batch_j_holds_tasks_j_j_plus_n_and_so_on',
              'tests/test_train_steps.py']),
    'train_steps': (['maml_plugin/algorithms/*.py'],
                    ['tests/test_train_steps.py',
                     'tests/test_algorithms.py']),
    'trainer': (['maml_plugin/train.py'],
                ['tests/test_trainer_plumbing.py',
                 'tests/test_field_boundaries.py', 'tests/test_train.py']),
    'evaluation': (['maml_plugin/evaluation.py'],
                   ['tests/test_report_numbers.py',
                    'tests/test_evaluation.py']),
    'checkpointing': (['maml_plugin/checkpointing.py'],
                      ['tests/test_trainer_plumbing.py',
                       'tests/test_train.py']),
    'guards': (['maml_plugin/guards.py'],
               ['tests/test_guards.py', 'tests/test_trainer_plumbing.py']),
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


def mutants_of(path: str) -> list[Mutant]:
  with open(os.path.join(REPO, path)) as f:
    tree = ast.parse(f.read())
  nodes = list(_walk(tree))
  out = []
  for i, (pos, kind, desc) in enumerate(_sites(tree)):
    out.append(Mutant(path, i, kind, getattr(nodes[pos], 'lineno', 0),
                      desc))
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


def _run_tests(root: str, tests: list[str], timeout: float) -> tuple[str, float]:
  """'passed', 'failed' or 'timeout', and seconds; pytest in a forked child."""
  start = time.time()
  log = os.path.join(root, 'pytest.log')
  pid = os.fork()
  if pid == 0:  # Child: a fresh interpreter state for the package and tests.
    try:
      fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
      os.dup2(fd, 1)
      os.dup2(fd, 2)
      os.chdir(root)
      sys.path.insert(0, root)
      import pytest  # pylint: disable=g-import-not-at-top
      code = pytest.main(['-x', '-q', '-p', 'no:cacheprovider',
                          '-W', 'ignore', *tests])
    except BaseException:  # pylint: disable=broad-except
      code = 3
    os._exit(int(code))
  deadline = start + timeout
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      code = os.waitstatus_to_exitcode(status)
      return ('passed' if code == 0 else 'failed'), time.time() - start
    if time.time() > deadline:
      os.kill(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
      return 'timeout', time.time() - start
    time.sleep(0.2)


def run_module(name: str, root: str, *, sample: int | None, seed: int,
               timeout: float | None, verbose: bool,
               baseline: bool = False, progress=None) -> dict:
  patterns, tests = MODULES[name]
  # With a baseline, a mutant first meets the baseline's tests (copied to
  # tests_before/): killed there, it is killed before and after; surviving,
  # it meets this tree's tests, which decide the score after.
  before = ([t.replace('tests/', 'tests_before/', 1) for t in tests
             if os.path.exists(os.path.join(root, t.replace(
                 'tests/', 'tests_before/', 1).split('::')[0]))]
            if baseline else [])
  paths = sorted(os.path.relpath(p, REPO) for pat in patterns
                 for p in glob.glob(os.path.join(REPO, pat)))
  paths = [p for p in paths if not p.endswith('__init__.py')]
  tests = [t for t in tests
           if os.path.exists(os.path.join(REPO, t.split('::')[0]))]
  mutants = [m for p in paths for m in mutants_of(p)]
  total = len(mutants)
  if sample is not None and sample < total:
    mutants = random.Random(f'{seed}:{name}').sample(mutants, sample)
    mutants.sort(key=lambda m: (m.path, m.line, m.index))
  outcome, seconds = _run_tests(root, tests, timeout=3600)
  if before and outcome == 'passed':
    outcome, more = _run_tests(root, before, timeout=3600)
    seconds += more
  if outcome != 'passed':
    with open(os.path.join(root, 'pytest.log')) as f:
      tail = f.read()[-3000:]
    raise SystemExit(f'{name}: the unmutated tests {outcome}:\n{tail}')
  limit = timeout or max(60.0, 3 * seconds)
  print(f'[{name}] {total} mutants in {len(paths)} files, running '
        f'{len(mutants)}; tests {" ".join(tests)} take {seconds:.0f}s '
        f'unmutated (timeout {limit:.0f}s)', flush=True)
  results = []
  for m in mutants:
    source = mutated_source(REPO, m)
    if source is None:
      continue
    target = os.path.join(root, m.path)
    with open(os.path.join(REPO, m.path)) as f:
      original = f.read()
    with open(target, 'w') as f:
      f.write(source)
    try:
      killed_before = None
      if before:
        outcome, seconds = _run_tests(root, before, limit)
        killed_before = outcome != 'passed'
      if not killed_before:
        outcome, more = _run_tests(root, tests, limit)
        seconds = more if killed_before is None else seconds + more
    finally:
      with open(target, 'w') as f:
        f.write(original)
    killed = outcome != 'passed'
    results.append(dict(dataclasses.asdict(m), outcome=outcome,
                        killed=killed, killed_before=killed_before,
                        seconds=round(seconds, 1)))
    if verbose or not killed or killed_before is False:
      note = ('' if killed_before is None else
              ' killed by the baseline' if killed_before else
              ' survived the baseline')
      print(f'  {"killed " if killed else "SURVIVED"} {m.path}:{m.line} '
            f'{m.description} ({outcome}, {seconds:.0f}s{note})', flush=True)
    if progress:
      progress(results)
  killed = sum(r['killed'] for r in results)
  return dict(module=name, total_mutants=total, run=len(results),
              killed=killed,
              killed_before=(sum(bool(r['killed_before']) for r in results)
                             if before else None),
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
                      help='seconds per mutant (default: 3x the unmutated '
                      'tests, at least 60)')
  parser.add_argument('--json', default=None, help='write the results here')
  parser.add_argument('--baseline', default=None,
                      help='another checkout (e.g. a detached worktree of an '
                      'older commit): also score the mutants against its '
                      'tests, the "before" column')
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
    # Compiled XLA programs persist across the forked runs: a mutant
    # recompiles only the functions its change touches.
    os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(root, 'xla_cache')
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    for module in PRELOAD:
      __import__(module)
    os.environ['PYTHONPATH'] = root + os.pathsep + os.environ.get(
        'PYTHONPATH', '')
    def progress(results, name=None):
      if args.json:  # Partial results survive an interrupted run.
        with open(args.json + '.partial', 'w') as f:
          json.dump(summary + [dict(module='(running)', results=results)],
                    f, indent=1)

    for name in names:
      summary.append(run_module(name, root, sample=args.sample,
                                seed=args.seed, timeout=args.timeout,
                                verbose=args.verbose,
                                baseline=bool(args.baseline),
                                progress=progress))
  print('\nmodule          mutants  run  killed  score  (baseline)')
  for s in summary:
    score = 100.0 * s['killed'] / s['run'] if s['run'] else float('nan')
    base = ''
    if s['killed_before'] is not None and s['run']:
      base = f'  ({100.0 * s["killed_before"] / s["run"]:5.1f}%)'
    print(f'{s["module"]:<15} {s["total_mutants"]:>7} {s["run"]:>4} '
          f'{s["killed"]:>7}  {score:5.1f}%{base}')
  for s in summary:
    for r in s['survivors']:
      print(f'survived: {r["path"]}:{r["line"]} {r["description"]}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(summary, f, indent=1)


if __name__ == '__main__':
  main()
