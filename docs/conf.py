"""Sphinx configuration: the guides (README and docs/*.md, MyST Markdown)
and the API reference from the docstrings, in the theme of the Flax and
optax docs (sphinx-book-theme).

  pip install -e '.[docs]'
  sphinx-build -W docs /tmp/maml_plugin_docs_html
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

project = 'maml_plugin'
extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'myst_parser',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', '_templates']
autodoc_default_options = {'members': True, 'show-inheritance': True}
autodoc_member_order = 'bysource'
# The API reference is generated from the package (docs/api/index.rst: a
# recursive autosummary of `maml_plugin`): one page per module under
# docs/api/generated/ (git-ignored), written at each build, so a new module
# is documented with no edit to the docs.
autosummary_generate = True
autosummary_generate_overwrite = True
templates_path = ['_templates']
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # Attributes: sections as fields, not as second descriptions
# README's "#section" links, and GitHub-style anchors in the pages.
myst_heading_anchors = 3

REPOSITORY = 'https://github.com/maml-plugin/maml_plugin'
html_theme = 'sphinx_book_theme'
html_title = 'maml_plugin'
html_static_path = ['_static']
html_css_files = ['wide.css']
html_theme_options = {
    'repository_url': REPOSITORY,
    'repository_branch': 'main',
    'path_to_docs': 'docs',
    'use_repository_button': True,
    'use_issues_button': True,
    'use_edit_page_button': False,
    'use_download_button': False,
    'show_toc_level': 2,
    'navigation_with_keys': False,
    # One search box, in the sidebar (the book theme's place for it).
    'navbar_persistent': [],
}
# A fence without a language is program output: no colouring guessed.
highlight_language = 'none'

_FIELD_ALIAS = re.compile(r'Alias for field number \d+$')


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """A NamedTuple's fields are descriptors (`collections._tuplegetter`)
  whose docstring Python writes ("Alias for field number 0"): it says
  nothing, and the class's own Attributes: section already says what each
  field means. Leave them out."""
  del app, what, name, options
  doc = getattr(obj, '__doc__', None)
  if isinstance(doc, str) and _FIELD_ALIAS.match(doc.strip()):
    return True
  return skip


def _import_both_commands():
  """`maml_plugin.main` and `maml_plugin.evaluate` each define absl's
  --workdir and --config at import, so one process imports only one of
  them. Import main, drop the flags it defined (nothing parses flags
  here), then import evaluate: autodoc finds both in `sys.modules`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  before = set(flags.FLAGS)
  import maml_plugin.main  # pylint: disable=g-import-not-at-top,unused-import
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)
  import maml_plugin.evaluate  # pylint: disable=g-import-not-at-top,unused-import


def setup(app):
  _import_both_commands()
  app.connect('autodoc-skip-member', _skip_namedtuple_fields)
