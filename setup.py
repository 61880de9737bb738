"""Build script: the metadata is in setup.cfg; here are the package list and
the long description.

setup.cfg cannot say "every maml_plugin package, plus the top-level
`configs/` folder installed as `maml_plugin.configs`". Shipping the configs
inside our own package (not as a top-level `configs` package) keeps them
from shadowing a user project's own `configs/`, the layout of every Flax
example. `python -m maml_plugin.main --config=configs/maml_sine.py` then
works outside the repository too (see `maml_plugin/config_files.py`).

The long description (PyPI's project page) is README.md with its relative
links (`docs/sinusoid.md`, `benchmarks/omniglot_protocols.png`) made
absolute under the repository's URL (setup.cfg's `url`): on PyPI a relative
link points nowhere.
"""

import configparser
import os
import re

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))
# [text](target) and ![alt](target) whose target is not a URL or an anchor.
_RELATIVE_LINK = re.compile(r'(!?)\[([^\]]*)\]\((?![a-z][a-z0-9+.-]*:|#)'
                            r'([^)\s]+)\)')


def absolute_links(markdown: str, url: str, ref: str = 'main') -> str:
  """Markdown with each relative link under `url`: images as raw files,
  the others as pages of the repository browser."""

  def replace(match):
    bang, text, target = match.groups()
    kind = 'raw' if bang else 'blob'
    return f'{bang}[{text}]({url.rstrip("/")}/{kind}/{ref}/{target})'

  return _RELATIVE_LINK.sub(replace, markdown)


def long_description() -> str:
  parser = configparser.ConfigParser()
  parser.read(os.path.join(HERE, 'setup.cfg'))
  with open(os.path.join(HERE, 'README.md'), encoding='utf-8') as f:
    return absolute_links(f.read(), parser['metadata']['url'])


setuptools.setup(
    packages=(setuptools.find_packages(include=['maml_plugin',
                                                'maml_plugin.*'])
              + ['maml_plugin.configs']),
    package_dir={'maml_plugin.configs': 'configs'},
    long_description=long_description(),
    long_description_content_type='text/markdown',
)
