"""The layout numbers of docs/layout.md, computed from the tree.

  python3 benchmarks/layout_numbers.py          # a Markdown table
  python3 benchmarks/layout_numbers.py --json
  python3 benchmarks/layout_numbers.py --write  # docs/layout.md's "now" rows

Lines of the longest module of `maml_plugin/` and of its longest function
(`ast`: a def's first line to its last, its decorators and docstring
included), and how often each name of the inner-step count occurs in
`maml_plugin/`, `configs/` and `docs/` (whole words, as `grep -rnw`
counts lines). The before/after table of docs/layout.md was written by
this script, before and after issue 25.
"""

import ast
import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INNER_STEP_NAMES = ('num_steps', 'num_inner_steps', 'max_steps',
                    'inner_steps', 'steps')
SEARCHED = ('maml_plugin', 'configs', 'docs')
LAYOUT_PAGE = os.path.join(REPO, 'docs', 'layout.md')


def _files(folder: str, suffixes: tuple[str, ...]):
  for root, dirs, files in os.walk(os.path.join(REPO, folder)):
    dirs[:] = sorted(d for d in dirs if not d.startswith(('_', '.')))
    for name in sorted(files):
      if name.endswith(suffixes):
        yield os.path.join(root, name)


def longest_module() -> tuple[str, int]:
  sizes = {}
  for path in _files('maml_plugin', ('.py',)):
    with open(path) as f:
      sizes[os.path.relpath(path, REPO)] = len(f.read().splitlines())
  name = max(sizes, key=sizes.get)
  return name, sizes[name]


def longest_function() -> tuple[str, int]:
  best = ('', 0)
  for path in _files('maml_plugin', ('.py',)):
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        size = node.end_lineno - first + 1
        if size > best[1]:
          best = (f'{os.path.relpath(path, REPO)}:{node.name}', size)
  return best


def inner_step_name_counts() -> dict[str, int]:
  """Lines naming each word, as `grep -rnw WORD maml_plugin configs docs`
  (docs/layout.md, which holds these numbers, left out)."""
  counts = dict.fromkeys(INNER_STEP_NAMES, 0)
  for folder in SEARCHED:
    for path in _files(folder, ('.py', '.md', '.rst')):
      if path == LAYOUT_PAGE:  # The page of these numbers names them all.
        continue
      with open(path) as f:
        lines = f.read().splitlines()
      for name in INNER_STEP_NAMES:
        word = re.compile(rf'(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])')
        counts[name] += sum(1 for line in lines if word.search(line))
  return counts


def numbers() -> dict:
  module, module_lines = longest_module()
  function, function_lines = longest_function()
  return {'longest_module': module, 'longest_module_lines': module_lines,
          'longest_function': function,
          'longest_function_lines': function_lines,
          'inner_step_names': inner_step_name_counts()}


# docs/layout.md's rows of the tree as it is, between these two lines.
BEGIN = '<!-- layout_numbers: begin -->'
END = '<!-- layout_numbers: end -->'


def table_rows(out: dict) -> list[str]:
  """The Markdown rows of the tree's numbers (docs/layout.md, "now")."""
  rows = [f"| longest module | `{out['longest_module']}`, "
          f"{out['longest_module_lines']} lines |",
          f"| longest function | `{out['longest_function']}`, "
          f"{out['longest_function_lines']} lines |"]
  rows += [f'| lines naming `{name}` | {count} |'
           for name, count in out['inner_step_names'].items()]
  return rows


def written_rows(page: str = LAYOUT_PAGE) -> list[str]:
  """The rows docs/layout.md holds between `BEGIN` and `END`."""
  with open(page) as f:
    text = f.read()
  return text.split(BEGIN, 1)[1].split(END, 1)[0].strip().splitlines()


def write(page: str = LAYOUT_PAGE) -> None:
  with open(page) as f:
    text = f.read()
  head, rest = text.split(BEGIN, 1)
  tail = rest.split(END, 1)[1]
  with open(page, 'w') as f:
    f.write(head + BEGIN + '\n' + '\n'.join(table_rows(numbers())) + '\n'
            + END + tail)


def main(argv):
  out = numbers()
  if '--json' in argv:
    print(json.dumps(out, indent=1))
  elif '--write' in argv:
    write()
  else:
    print('\n'.join(table_rows(out)))


if __name__ == '__main__':
  main(sys.argv[1:])
