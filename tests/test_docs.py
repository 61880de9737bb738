"""The documentation builds: Sphinx with autodoc over every module, the
README and the pages of docs/ (`docs/conf.py`), warnings as errors."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'maml_plugin')


def _modules() -> list[str]:
  """Every module of the package, subpackages included."""
  out = []
  for root, dirs, files in os.walk(PACKAGE):
    dirs[:] = sorted(d for d in dirs if d != '__pycache__')
    package = os.path.relpath(root, REPO).replace(os.sep, '.')
    for name in sorted(files):
      if name == '__init__.py':
        out.append(package)
      elif name.endswith('.py'):
        out.append(f'{package}.{name[:-3]}')
  return out


def test_every_module_has_an_api_page():
  """A new module without its page (or a page left behind) fails here."""
  with open(os.path.join(REPO, 'docs', 'api', 'index.rst')) as f:
    listed = [line.strip() for line in f if line.startswith('   maml_plugin')]
  assert sorted(listed) == sorted(_modules())
  for module in listed:
    assert os.path.exists(os.path.join(REPO, 'docs', 'api', module + '.rst'))


def test_docs_build_with_warnings_as_errors(tmp_path):
  """`sphinx-build -W`: a docstring autodoc or napoleon cannot parse, a
  page outside every toctree, a link or image that does not resolve, or a
  module that fails to import stops the build. The dummy builder reads and
  resolves every page but writes no HTML (faster; the same warnings)."""
  env = {**os.environ, 'PYTHONPATH': REPO + os.pathsep
         + os.environ.get('PYTHONPATH', '')}
  proc = subprocess.run(
      [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q',
       '-b', 'dummy', '-d', str(tmp_path / 'doctrees'),
       os.path.join(REPO, 'docs'), str(tmp_path / 'out')],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
