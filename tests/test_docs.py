"""The documentation builds: Sphinx with autodoc over every module, the
README and the pages of docs/ (`docs/conf.py`), warnings as errors, with
the navigation and API pages it promises."""

import configparser
import os
import re
import subprocess
import sys

import pytest

from tests import layout_checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'maml_plugin')


def _modules() -> list[str]:
  """Every module of the package, subpackages included."""
  return layout_checks.package_modules(REPO)


def test_the_api_reference_is_generated_from_the_package():
  """docs/api/index.rst lists no module by hand: one recursive autosummary
  of the package root, its pages generated at build time
  (`autosummary_generate`), so every module the package holds, a new one
  included, gets a page (the build below checks each) and no page can
  name a module that is gone."""
  with open(os.path.join(REPO, 'docs', 'api', 'index.rst')) as f:
    index = f.read()
  tables = index.split('.. autosummary::')[1:]
  assert len(tables) == 1
  options, entries = tables[0].split('\n\n', 1)
  assert ':recursive:' in options and ':toctree: generated' in options
  assert entries.split() == ['maml_plugin']
  assert not re.search(r'^\.\. automodule::', index, re.M)
  assert sorted(os.listdir(os.path.join(REPO, 'docs', 'api'))) in (
      ['index.rst'], ['generated', 'index.rst'])


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
  for page in ('index', 'own_loop', 'api/index'):
    assert os.path.exists(os.path.join(html, page + '.html')), page


def test_every_module_has_its_generated_api_page(html):
  """One page per module of the package, subpackages included, each
  showing its module's docstring; none for a module that is not there."""
  pages = sorted(name[:-5] for name in os.listdir(
      os.path.join(html, 'api', 'generated')) if name.endswith('.html'))
  assert pages == sorted(_modules())
  with open(os.path.join(html, 'api', 'generated',
                         'maml_plugin.algorithms.fomaml.html')) as f:
    assert 'First-order MAML' in f.read()


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
  with open(os.path.join(html, 'api', 'generated',
                         'maml_plugin.core.html')) as f:
    page = f.read()
  assert 'Alias for field number' not in page
  assert 'mean query loss after adaptation (the meta-loss)' in page
