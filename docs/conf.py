"""Sphinx configuration: the API reference from the docstrings, and the
Markdown pages of docs/ and the README.

  pip install -e '.[test]'
  sphinx-build -W docs /tmp/maml_plugin_docs
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

project = 'maml_plugin'
extensions = ['sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'myst_parser']
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build']
autodoc_default_options = {'members': True, 'show-inheritance': True}
autodoc_member_order = 'bysource'
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# README's "#section" links, and GitHub-style anchors in the pages.
myst_heading_anchors = 3
html_theme = 'alabaster'
html_title = 'maml_plugin'
napoleon_use_ivar = True  # Attributes: sections as fields, not as second descriptions
