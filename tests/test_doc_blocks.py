"""Every ```python block of README.md and docs/*.md runs as written.

Each block is executed here, in a fresh namespace, or by the test named in
`RUN_ELSEWHERE` (those that train longer and check more than that they
run); none is skipped. A block runs in the namespace of the one before it
only where the page says it continues it (the paragraph before it says
"continu..."). What a block prints must be what the page shows after it,
digits aside (they vary with the CPU), and a printed loss "before
adapting" must be above the one after.
"""

import contextlib
import dataclasses
import glob
import io
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'docs',
                                                               '*.md')))

# Blocks another test executes as written, by the marker before them.
RUN_ELSEWHERE = {
    'own-loop-example': 'tests/test_readme.py',
    'own-model-example': 'tests/test_readme.py',
    'clu-actions-example': 'tests/test_readme.py',
    'train-state-example': 'tests/test_readme.py',
    'nnx-loop-example': 'tests/test_readme.py',
    'user-loop-example': 'tests/test_user_loop.py',
    'user-loop-run': 'tests/test_user_loop.py',
    'own-loop-complete': 'tests/test_own_loop.py',
    'own-loop-resume': 'tests/test_own_loop.py',
}

_FENCE = re.compile(r'^```([^\n`]*)\n(.*?)^```[ \t]*$', re.S | re.M)


@dataclasses.dataclass(frozen=True)
class Block:
  page: str
  line: int
  language: str
  source: str
  marker: str | None     # the <!-- name --> right before the fence
  continues: bool        # the paragraph before says it continues a block
  shown: str | None      # the output block right after it, if any

  @property
  def name(self) -> str:
    return f'{self.page}:{self.line}'


def _blocks(page: str) -> list[Block]:
  with open(os.path.join(REPO, page), encoding='utf-8') as f:
    text = f.read()
  fences = list(_FENCE.finditer(text))
  out = []
  for i, m in enumerate(fences):
    before = text[fences[i - 1].end() if i else 0:m.start()]
    marker = re.search(r'<!-- ([\w-]+) -->\s*$', before)
    prose = before[:marker.start()] if marker else before
    paragraph = prose.strip().split('\n\n')[-1]
    shown = None
    if i + 1 < len(fences):
      nxt = fences[i + 1]
      between = text[m.end():nxt.start()]
      # Output right after, or after one paragraph that introduces it.
      one_paragraph = '\n\n' not in between.strip() and '#' not in between
      if nxt.group(1).strip() in ('', 'text') and one_paragraph:
        shown = nxt.group(2)
    out.append(Block(page, text[:m.start()].count('\n') + 1,
                     m.group(1).strip(), m.group(2),
                     marker.group(1) if marker else None,
                     'continu' in paragraph.lower(), shown))
  return out


ALL = [b for page in PAGES for b in _blocks(page)]
PYTHON = [b for b in ALL if b.language == 'python']


def _chains() -> list[list[Block]]:
  """The python blocks of each page, a block that continues joined to the
  chain of the one before it."""
  chains = []
  for b in PYTHON:
    if b.continues and chains and chains[-1][-1].page == b.page:
      chains[-1].append(b)
    else:
      chains.append([b])
  return chains


HERE = [c for c in _chains() if c[0].marker not in RUN_ELSEWHERE]


def test_every_python_block_is_run_here_or_by_the_test_that_says_so():
  assert len(PYTHON) >= 14, [b.name for b in PYTHON]
  for chain in _chains():
    elsewhere = [b.marker in RUN_ELSEWHERE for b in chain]
    assert all(elsewhere) or not any(elsewhere), [b.name for b in chain]
  for b in PYTHON:
    if b.marker in RUN_ELSEWHERE:
      with open(os.path.join(REPO, RUN_ELSEWHERE[b.marker])) as f:
        test = f.read()
      assert f'<!-- {b.marker} -->' in test and 'exec(' in test, (
          f'{b.name}: {RUN_ELSEWHERE[b.marker]} does not run <!-- '
          f'{b.marker} -->')
  assert sorted(RUN_ELSEWHERE) == sorted(
      b.marker for b in PYTHON if b.marker in RUN_ELSEWHERE)


def test_code_is_labelled_by_what_it_is():
  """Shell commands in ```bash (not python, not unlabelled), no `...`
  standing for code a reader must write, no python prompt."""
  for b in ALL:
    first = b.source.lstrip().split('\n', 1)[0]
    if b.language in ('', 'text'):
      assert not re.match(r'(python3?|pip|sphinx-build|tensorboard) ',
                          first), f'{b.name}: a command in a ``` block'
    if b.language == 'python':
      assert not re.search(r'^\s*(\.\.\.|>>> |\$ |python3? -m)', b.source,
                           re.M), f'{b.name}: not Python as written'
    assert b.language in ('', 'text', 'python', 'bash', 'diff') or (
        b.language.startswith('{')), b.name  # or a MyST directive


def _numbers_out(text: str) -> list[str]:
  return [re.sub(r'-?\d+(\.\d+)?(e-?\d+)?', 'N', line).strip()
          for line in text.strip().splitlines()]


@pytest.mark.parametrize('chain', HERE, ids=[c[0].name for c in HERE])
def test_block_runs_as_written_and_prints_what_the_page_shows(chain):
  namespace = {'__name__': '__doc_block__'}
  for b in chain:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      exec(compile(b.source, b.name, 'exec'), namespace)  # pylint: disable=exec-used
    printed = printed.getvalue()
    if b.shown is not None and 'print(' in b.source:
      assert _numbers_out(printed) == _numbers_out(b.shown), (
          f'{b.name} printed\n{printed}\nthe page shows\n{b.shown}')
    for before, after in re.findall(
        r'([\d.]+) before adapting, ([\d.]+) after', printed):
      assert float(after) < float(before), f'{b.name}: {printed}'
