"""The shipped ml_collections configs; installed as `maml_plugin.configs`.

Each module is a config file for `--config=configs/<name>.py[:arg]`. From a
non-editable install, outside this repository, the same flag (or
`--config=<name>[:arg]`) loads the installed copy.
"""
