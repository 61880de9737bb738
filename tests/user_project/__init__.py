"""A user's own project, outside maml_plugin: a task family, a model and an
algorithm that register themselves, and a config that names them.

  python -m maml_plugin.main --config=tests/user_project/config.py --workdir=DIR
"""
