"""Finds the file behind `--config`, also for the configs we ship.

The repository's `configs/` folder is installed with the package as
`maml_plugin.configs`, so after `pip install maml_plugin` (no checkout)::

  python -m maml_plugin.main --config=configs/maml_sine.py:quick --workdir=...
  python -m maml_plugin.main --config=maml_sine:quick --workdir=...

both run the shipped `maml_sine.py`. A `--config` path that exists is always
loaded as given (ml_collections' rule: your own `configs/maml_sine.py`
wins); only a path that does not exist is looked up among the shipped
configs by its file name, `<name>` or `<name>.py`, and a name that matches
none stops with one line listing the shipped ones.
"""

from __future__ import annotations

import importlib.util
import os


class ConfigFileError(ValueError):
  """`--config` names no file and no shipped config (one-line message)."""


_PACKAGE = 'maml_plugin.configs'
_FLAG = 'config'


def shipped_dir() -> str | None:
  """The folder of the shipped configs, or None if there is none.

  An install has `maml_plugin.configs`; a source checkout used without
  installing it (the repository on PYTHONPATH) has `configs/` beside the
  package, next to setup.py.
  """
  try:
    spec = importlib.util.find_spec(_PACKAGE)
  except ImportError:
    spec = None
  if spec is not None and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  package = os.path.dirname(os.path.abspath(__file__))
  root = os.path.dirname(package)
  checkout = os.path.join(root, 'configs')
  if (os.path.isfile(os.path.join(root, 'setup.py'))
      and os.path.isdir(checkout)):
    return checkout
  return None


def shipped_names() -> list[str]:
  """Names of the shipped configs (`maml_sine`, ...), sorted."""
  folder = shipped_dir()
  if folder is None:
    return []
  return sorted(name[:-3] for name in os.listdir(folder)
                if name.endswith('.py') and not name.startswith('_'))


def resolve(value: str) -> str:
  """The `--config` value to load: `value` itself if its path exists, else
  the shipped config of that file name (the `:arg` part kept)."""
  path, colon, arg = value.partition(':')
  if os.path.exists(path):
    return value
  name = os.path.basename(path)
  if name.endswith('.py'):
    name = name[:-3]
  if name in shipped_names():
    return os.path.join(shipped_dir(), name + '.py') + colon + arg
  known = ', '.join(shipped_names()) or 'none found'
  raise ConfigFileError(
      f'--config={value}: no file {path!r} and no shipped config named '
      f'{name!r} (shipped: {known})')


def resolve_argv(argv: list[str]) -> list[str]:
  """`argv` with its `--config` value resolved (`--config=V` or
  `--config V`); other arguments, `--config.<field>` overrides included,
  unchanged."""
  out = list(argv)
  for i, arg in enumerate(out):
    if i == 0:
      continue
    for prefix in (f'--{_FLAG}=', f'-{_FLAG}='):
      if arg.startswith(prefix):
        out[i] = prefix + resolve(arg[len(prefix):])
    if arg in (f'--{_FLAG}', f'-{_FLAG}') and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
  return out


def flags_parser(argv: list[str], flag_values=None) -> list[str]:
  """An `absl.app.run` flags_parser: absl's own parsing (of `flag_values`,
  default `absl.flags.FLAGS`) after `--config` is resolved. A value that
  names nothing, a config file whose `get_config` raises (a misspelt
  `:arg`) and any other flag error stop with one line."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    argv = resolve_argv(argv)
  except ConfigFileError as e:
    raise SystemExit(f'maml_plugin: bad config: {e}') from None
  try:
    return (flags.FLAGS if flag_values is None else flag_values)(argv)
  except flags.Error as e:
    value = config_value(argv)
    if value is not None:
      try:
        load(value)
      except Exception as error:  # pylint: disable=broad-except
        raise SystemExit(f'maml_plugin: bad config: --config={value}: '
                         f'{type(error).__name__}: {_one_line(error)}'
                         ) from None
    raise SystemExit(f'maml_plugin: bad flag: {_one_line(e)}') from None


def _one_line(e: Exception) -> str:
  # The message on one line; a KeyError's str() is its message's repr.
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  return ' '.join(text.split())


def config_value(argv: list[str]) -> str | None:
  """The `--config` value in `argv` (the last one), or None."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    for prefix in (f'--{_FLAG}=', f'-{_FLAG}='):
      if arg.startswith(prefix):
        value = arg[len(prefix):]
    if arg in (f'--{_FLAG}', f'-{_FLAG}') and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def load(value: str):
  """`get_config(arg)` of the config file `value` (`path[:arg]`), unlocked:
  what config_flags builds before it applies the overrides."""
  path, colon, arg = resolve(value).partition(':')
  spec = importlib.util.spec_from_file_location('_maml_plugin_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if colon else module.get_config()


def follow_train_step(config, argv: list[str]) -> str | None:
  """``--config.train_step=NAME`` in `argv` on a config file written for
  another algorithm trains NAME: the fields of the file's algorithm that
  NAME does not use, and that the command line did not set, are removed
  from `config` (`config_validation.follow_train_step`). Returns the one
  line saying so, naming the file's own variant for NAME where it has one
  (``configs/maml_sine.py:maml``), or None if nothing was removed."""
  from maml_plugin import config_validation  # pylint: disable=g-import-not-at-top
  value = config_value(argv)
  set_fields = {a.split('=', 1)[0][len('--config.'):].split('.')[0]
                for a in argv[1:] if a.startswith('--config.') and '=' in a}
  if value is None or 'train_step' not in set_fields:
    return None
  try:
    file_config = load(value)
  except Exception:  # pylint: disable=broad-except
    return None  # The file's own error is said when it is parsed.
  old, new = file_config.get('train_step'), config.get('train_step')
  removed = config_validation.follow_train_step(config, file_config,
                                                set_fields)
  if not removed:
    return None
  line = (f'--config.train_step={new}: {value} is written for {old!r}; '
          f'left out its fields that {new!r} does not use: '
          f'{", ".join(removed)}')
  variant = variant_for(value, new)
  if variant is not None:
    line += f' (--config={variant} is {new!r} as that file sets it up)'
  return line


def variant_for(value: str, name: str) -> str | None:
  """The `--config` value of the same file whose argument also names the
  train step `name` (``maml_sine.py:quick`` -> ``maml_sine.py:quick,maml``)
  and whose config runs it; None if the file has no such variant."""
  path, colon, arg = value.partition(':')
  candidate = f'{path}:{arg},{name}' if colon and arg else f'{path}:{name}'
  try:
    config = load(candidate)
  except Exception:  # pylint: disable=broad-except
    return None
  return candidate if config.get('train_step') == name else None
