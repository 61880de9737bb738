"""Pictures for people: the MAML paper's fitted-sinusoid figure.

Pure in what it computes; `save_sinusoid_adaptation` writes one PNG.
"""

from __future__ import annotations


import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from maml_plugin import workdir as workdir_lib


def save_sinusoid_adaptation(path: str, panels: list[dict], *,
                             inner_steps: tuple[int, ...]) -> None:
  """One panel per task: true curve, support points, predictions.

  Args:
    path: PNG file to write (atomically).
    panels: per task ``{'x': grid, 'y_true': ..., 'support_x': ...,
      'support_y': ..., 'predictions': [pred after each of inner_steps],
      'title': str}``.
    inner_steps: the inner step counts of ``panels[i]['predictions']``.
  """
  n = len(panels)
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
  styles = ['--', '-', '-', '-']
  colors = ['tab:gray', 'tab:orange', 'tab:green', 'tab:purple']
  for ax, panel in zip(axes[0], panels):
    ax.plot(panel['x'], panel['y_true'], color='tab:red', lw=2,
            label='ground truth')
    for i, (k, pred) in enumerate(zip(inner_steps, panel['predictions'])):
      label = 'pre-update' if k == 0 else f'after {k} step{"s" * (k > 1)}'
      ax.plot(panel['x'], pred, styles[i % 4], color=colors[i % 4], lw=1.5,
              label=label)
    ax.scatter(panel['support_x'], panel['support_y'], marker='^', s=40,
               color='black', zorder=5, label='support (K points)')
    ax.set_title(panel['title'], fontsize=9)
    ax.set_xlim(float(np.min(panel['x'])), float(np.max(panel['x'])))
    ax.set_xlabel('x')
  axes[0][0].set_ylabel('y')
  axes[0][-1].legend(fontsize=7, loc='lower right')
  fig.tight_layout()
  try:  # Whole or not at all; the temporary file goes on failure.
    workdir_lib.write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110,
                                                           format='png'))
  finally:
    plt.close(fig)
