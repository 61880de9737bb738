"""The documentation builds: Sphinx with autodoc over every module, the
README and the pages of docs/ (`docs/conf.py`), warnings as errors, with
the navigation and API pages it promises."""

import configparser
import os
import re
import subprocess
import sys

import pytest

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


def _api_pages() -> dict[str, str]:
  """docs/api/<layer>.rst: its text, for each layer page of the index."""
  api = os.path.join(REPO, 'docs', 'api')
  with open(os.path.join(api, 'index.rst')) as f:
    index = f.read()
  toctree = index.split('.. toctree::')[1].split('\n\n', 2)[1]
  pages = {}
  for name in toctree.split():
    with open(os.path.join(api, name + '.rst')) as f:
      pages[name] = f.read()
  return pages


def test_every_module_is_on_exactly_one_api_page_in_its_table():
  """A new module left off the API pages (or a page naming a module that
  is gone, or a module on two layers) fails here; so does a module whose
  section its layer's autosummary table does not list."""
  documented = []
  for name, text in _api_pages().items():
    sections = re.findall(r'^\.\. automodule:: (\S+)$', text, re.M)
    table = text.split('.. autosummary::')[1].split('\n\n', 2)[1].split()
    assert table == sections, name
    documented += sections
  assert len(documented) == len(set(documented)), documented
  assert sorted(documented) == sorted(m for m in _modules()
                                      if m != 'maml_plugin')


def test_the_test_extra_installs_what_the_docs_build_needs():
  """`pip install -e '.[test]'` must be enough for the build test below."""
  config = configparser.ConfigParser()
  config.read(os.path.join(REPO, 'setup.cfg'))
  extras = config['options.extras_require']
  docs = set(extras['docs'].split())
  assert {r.split('>')[0] for r in docs} >= {'sphinx', 'myst-parser',
                                             'sphinx-book-theme'}
  assert docs <= set(extras['test'].split())


@pytest.fixture(scope='module')
def html(tmp_path_factory) -> str:
  """`sphinx-build -W` (warnings are errors) of the whole site; its
  output folder. A docstring autodoc or napoleon cannot parse, a page
  outside every toctree, a link or image that does not resolve, or a
  module that fails to import stops the build."""
  tmp = tmp_path_factory.mktemp('docs')
  env = {**os.environ, 'PYTHONPATH': REPO + os.pathsep
         + os.environ.get('PYTHONPATH', '')}
  proc = subprocess.run(
      [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q',
       '-b', 'html', '-d', str(tmp / 'doctrees'),
       os.path.join(REPO, 'docs'), str(tmp / 'html')],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return str(tmp / 'html')


def test_docs_build_with_warnings_as_errors(html):
  for page in ('index', 'own_loop', 'api/core', 'api/trainer'):
    assert os.path.exists(os.path.join(html, page + '.html')), page


def test_the_left_navigation_is_in_reading_order(html):
  """The sidebar lists the guides in the order of docs/index.md's
  toctrees, under their captions (not a glob sorted by file name)."""
  with open(os.path.join(html, 'index.html')) as f:
    page = f.read()
  nav = page[page.index('bd-docs-nav'):]
  captions = re.findall(r'<p aria-level="2" class="caption"[^>]*>'
                        r'<span class="caption-text">([^<]+)<', nav)
  assert captions == ['Getting started', 'Guides', 'Benchmarks and testing',
                      'Reference']
  order = re.findall(r'href="([a-z_]+)\.html"', nav)
  assert order.index('sinusoid') < order.index('own_loop') < order.index(
      'extending') < order.index('testing') < order.index('layout')


def test_namedtuple_fields_say_what_they_mean_not_their_index(html):
  """Python's 'Alias for field number 0' of each NamedTuple field is left
  out; the class's Attributes: section says what the fields mean."""
  with open(os.path.join(html, 'api', 'core.html')) as f:
    page = f.read()
  assert 'Alias for field number' not in page
  assert 'mean query loss after adaptation (the meta-loss)' in page
