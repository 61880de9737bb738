"""The files a PyPI user gets: the sdist and the wheel `python -m build`
makes from this tree, checked as a user or a packager would meet them.

- `twine check --strict` passes both;
- the sdist holds every file of tests/, docs/, examples/ and benchmarks/
  and the LICENSE, and its tests are collected as in this checkout (same
  count, no errors) and a test file of it passes, importing the sdist's own
  package;
- the wheel holds `py.typed` and the LICENSE, and its metadata has the
  classifiers, project URLs and a long description whose links all work
  off the repository (absolute).
"""

import email
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
from packaging import requirements

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_TREES = ('tests', 'docs', 'examples', 'benchmarks')
_SKIP_DIRS = {'__pycache__', '_build', '.git', 'build', 'dist', '.pytest_cache'}


def _files(root: str, top: str) -> set[str]:
  out = set()
  for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
    dirnames[:] = [d for d in dirnames
                   if d not in _SKIP_DIRS and not d.endswith('.egg-info')]
    for name in filenames:
      if not name.endswith(('.pyc', '.pyo')):
        out.add(os.path.relpath(os.path.join(dirpath, name), root))
  return out


def _run(args, **kwargs):
  proc = subprocess.run(args, capture_output=True, text=True, timeout=600,
                        **kwargs)
  assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
  return proc


def _collected(cwd: str, env=None) -> int:
  proc = _run([sys.executable, '-m', 'pytest', '--collect-only', '-q',
               '-p', 'no:cacheprovider', 'tests'], cwd=cwd, env=env)
  last = proc.stdout.strip().splitlines()[-1]
  assert 'error' not in last.lower(), proc.stdout[-3000:]
  return int(re.search(r'(\d+) tests? collected', proc.stdout).group(1))


@pytest.fixture(scope='module')
def dists(tmp_path_factory):
  """(sdist, wheel) built from a copy of this tree (a build writes
  egg-info and build/ into its source)."""
  tmp = tmp_path_factory.mktemp('packaging')
  source = tmp / 'source'
  shutil.copytree(REPO, source, ignore=lambda d, names: [
      n for n in names if n in _SKIP_DIRS or n.endswith('.egg-info')])
  out = tmp / 'dist'
  _run([sys.executable, '-m', 'build', '--no-isolation', '-o', str(out),
        str(source)])
  (sdist,) = out.glob('maml_plugin-*.tar.gz')
  (wheel,) = out.glob('maml_plugin-*.whl')
  return sdist, wheel


@pytest.fixture(scope='module')
def sdist_root(dists, tmp_path_factory):
  """The unpacked sdist's top folder."""
  tmp = tmp_path_factory.mktemp('sdist')
  with tarfile.open(dists[0]) as tar:
    tar.extractall(tmp, filter='data')
  (root,) = tmp.iterdir()
  return root


def test_twine_check_strict_passes(dists):
  proc = _run([sys.executable, '-m', 'twine', 'check', '--strict',
               *map(str, dists)])
  assert proc.stdout.count('PASSED') == 2, proc.stdout


def test_sdist_holds_the_trees_its_tests_need(sdist_root):
  root = sdist_root
  for top in SHIPPED_TREES:
    missing = _files(REPO, top) - _files(str(root), top)
    assert not missing, f'not in the sdist: {sorted(missing)[:10]}'
  for name in ('LICENSE', 'CHANGELOG.md', 'third_party_notes.md'):
    assert (root / name).is_file(), name
  assert (root / 'maml_plugin' / 'py.typed').is_file()


def test_sdist_tests_run_as_in_a_checkout(sdist_root):
  root = sdist_root
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  assert _collected(str(root), env) == _collected(REPO, env)
  proc = _run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
               'tests/test_checks.py', '-x'], cwd=root, env=env)
  assert ' passed' in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
  where = _run([sys.executable, '-c',
                'import maml_plugin; print(maml_plugin.__file__)'],
               cwd=root, env=env).stdout.strip()
  assert where.startswith(str(root)), where


def test_wheel_files_and_metadata(dists):
  _, wheel = dists
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    (metadata,) = [n for n in names if n.endswith('.dist-info/METADATA')]
    meta = email.message_from_string(z.read(metadata).decode())
  assert 'maml_plugin/py.typed' in names
  assert any(n.endswith('LICENSE') and '.dist-info/' in n for n in names)
  assert 'Typing :: Typed' in meta.get_all('Classifier')
  urls = dict(u.split(', ', 1) for u in meta.get_all('Project-URL'))
  assert {'Documentation', 'Source', 'Changelog'} <= set(urls)
  description = meta.get_payload()
  links = re.findall(r'\]\(([^)\s]+)\)', description)
  assert len(links) > 10, links
  relative = [l for l in links if not re.match(r'https?://|#', l)]
  assert not relative, f'links that break on PyPI: {relative}'
  # The rewrite keeps each target: docs/x.md -> URL/blob/main/docs/x.md.
  with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
    readme_links = re.findall(r'\]\(([^)\s]+)\)', f.read())
  assert len(readme_links) == len(links)
  for before, after in zip(readme_links, links):
    assert after == before or after.endswith('/main/' + before), (before,
                                                                   after)


_BOUNDED = ('jax', 'flax', 'optax', 'orbax-checkpoint', 'jaxline')


def _requirements(dists):
  """The wheel's Requires-Dist: what pip installs from."""
  _, wheel = dists
  with zipfile.ZipFile(wheel) as z:
    (metadata,) = [n for n in z.namelist()
                   if n.endswith('.dist-info/METADATA')]
    meta = email.message_from_string(z.read(metadata).decode())
  return [requirements.Requirement(r) for r in meta.get_all('Requires-Dist')]


def test_breaking_dependencies_have_upper_bounds_the_tests_ran_inside(dists):
  """jax, flax, optax, orbax (and jaxline, whose internals jaxline_compat
  patches) are capped below their next minor release; and every
  requirement the wheel declares, extras included, admits the version
  these tests run against (a range the suite never ran in is untested)."""
  found = {}
  for req in _requirements(dists):
    name = req.name.lower()
    installed = importlib.metadata.version(req.name)
    assert req.specifier.contains(installed, prereleases=True), (
        f'{req}: installed {installed} is outside it')
    found.setdefault(name, []).append(req)
  for name in _BOUNDED:
    for req in found[name]:
      upper = [s for s in req.specifier if s.operator in ('<', '<=', '~=')]
      assert upper, f'{req}: no upper bound'
