"""What the layout, docs and contract tests list, read from the tree and
the registries (test helper), for `maml_plugin` or any package laid out
like it: tests/test_layout.py, tests/test_docs.py and tests/test_checks.py
run these on the package, tests/test_new_entry.py on a throw-away package
with one more algorithm.

Nothing here names an entry: adding an algorithm, task family or model is
its module plus one import in its folder's `__init__.py`.
"""

import os


def package_modules(root: str, package: str = 'maml_plugin') -> list[str]:
  """Every module of `package` (a folder under `root`), subpackages
  included, dotted, sorted; a package is its own name."""
  out = []
  for folder, dirs, files in os.walk(os.path.join(root, package)):
    dirs[:] = sorted(d for d in dirs if d != '__pycache__')
    dotted = os.path.relpath(folder, root).replace(os.sep, '.')
    for name in sorted(files):
      if name == '__init__.py':
        out.append(dotted)
      elif name.endswith('.py'):
        out.append(f'{dotted}.{name[:-3]}')
  return sorted(out)


def entries_of(registry, package: str = 'maml_plugin') -> dict[str, str]:
  """`registry`'s entries that modules of `package` register: name -> the
  registering module. Tests register others in the same process
  (pytest-xdist collects every test module in each worker)."""
  out = {}
  for name in registry.names():
    module = registry.lookup(name).__module__
    if module.startswith(package + '.'):
      out[name] = module
  return out


def package_names(registry, package: str = 'maml_plugin') -> list[str]:
  """`registry.names()` registered by modules of `package`, sorted."""
  return sorted(entries_of(registry, package))


def one_module_per_entry(registry, folder: str,
                         package: str = 'maml_plugin') -> list[str]:
  """What breaks "one entry, one module" for `registry`, whose entries
  live in `package.folder` (``algorithms``, ``tasks``, ``models``): each
  entry registered by the module of its own name there, no module
  registering two. Returns the problems, one line each (none: [])."""
  problems = []
  entries = entries_of(registry, package)
  if not entries:
    problems.append(f'{package}: no {registry.kind} registered')
  for name, module in sorted(entries.items()):
    if module != f'{package}.{folder}.{name}':
      problems.append(f'{registry.kind} {name!r} is registered by {module}, '
                      f'not by {package}.{folder}.{name}')
  return problems


def registry_folders(algorithms, models, tasks) -> dict:
  """The package's registries and the folder of each one's entries."""
  return {algorithms.TRAIN_STEPS: 'algorithms', models.MODELS: 'models',
          tasks.TASKS: 'tasks'}
