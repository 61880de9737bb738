"""Build script: the metadata is in setup.cfg; only the package list is here.

setup.cfg cannot say "every maml_plugin package, plus the top-level
`configs/` folder installed as `maml_plugin.configs`". Shipping the configs
inside our own package (not as a top-level `configs` package) keeps them
from shadowing a user project's own `configs/`, the layout of every Flax
example. `python -m maml_plugin.main --config=configs/maml_sine.py` then
works outside the repository too (see `maml_plugin/config_files.py`).
"""

import setuptools

setuptools.setup(
    packages=(setuptools.find_packages(include=['maml_plugin',
                                                'maml_plugin.*'])
              + ['maml_plugin.configs']),
    package_dir={'maml_plugin.configs': 'configs'},
)
