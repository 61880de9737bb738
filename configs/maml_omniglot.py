"""MAML on Omniglot few-shot classification (Finn et al. 2017, sec. 5.2).

Run it (meta-train on the Vinyals train split, then evaluate on 600 tasks of
its 423-character test split)::

  export MAML_PLUGIN_DATA_DIR=/path/to/data   # holds omniglot/images_*.zip
  python -m maml_plugin.main --config=configs/maml_omniglot.py --workdir=/tmp/omni
  python -m maml_plugin.evaluate --config=configs/maml_omniglot.py --workdir=/tmp/omni

The default is the paper's 5-way 1-shot protocol: meta-batch 32, 1 inner
step at alpha=0.4, Adam 1e-3, 60,000 meta-steps, 10 inner steps at test.
Arguments, comma-separated: at most one of `5w1s` (the default), `5w5s`,
`20w1s` (meta-batch 16, 5 inner steps at alpha=0.1), `20w5s`; `reference`
(the split and augmentation of the MAML paper's code, see `set_reference`;
without it the Vinyals split); `mamlpp` (the
MAML++ train step on that protocol, see `set_mamlpp`) or `imaml` (implicit
MAML with its paper's settings, see `set_imaml`); `quick` (a seconds-long
run for tests). E.g. `--config=configs/maml_omniglot.py:mamlpp,quick` or
`--config=configs/maml_omniglot.py:20w5s,reference`.
Any field can be overridden, e.g. `--config.first_order=True`.
"""

import ml_collections
from ml_collections import config_dict

PROTOCOLS = ('5w1s', '5w5s', '20w1s', '20w5s')
_WORDS = PROTOCOLS + ('reference', 'mamlpp', 'imaml', 'quick')


def set_reference(config) -> None:
  """Switches `config` to the split and augmentation of the MAML paper's
  code (github.com/cbfinn/maml): 1,100 / 100 / 423 characters of both zips
  at random whatever their alphabet (`omniglot.reference_characters`), each
  class of a task rotated by its own random multiple of 90 degrees, in
  training and in evaluation, and, as that code tests, as many query
  images per class as support images (it draws 2K images per class). The
  protocol (meta-batch, inner steps and rate, Conv-4, transductive batch
  norm, 10 steps on 600 tasks at test) stays the config's."""
  config.train_split = 'reference_train'
  config.eval_split = 'reference_test'
  config.rotate_classes = True
  config.eval_num_query = config.num_support


def set_mamlpp(config) -> None:
  """Switches `config` to MAML++ (Antoniou et al. 2019) on its protocol.

  Per-step batch-norm weights, learned per-layer per-step inner rates
  (LSLR), multi-step loss, derivative-order annealing and a cosine meta
  learning rate. The task protocol stays the config's (its inner rate,
  meta-batch, stride-2 Conv-4), with at least 3 inner steps. The rates take
  Adam steps of `rate_meta_lr` = `inner_lr` / 1000, about 0.1% of a rate
  per meta-step: the setting that kept LSLR stable on sinusoids
  (configs/maml_sine.py:mamlpp).
  """
  config.train_step = 'mamlpp'
  if 'first_order' in config:
    del config.first_order  # Set by the schedule, `first_order_steps`.
  # MSL needs several steps: 3 unless the protocol has more (20-way: 5).
  config.num_inner_steps = max(config.num_inner_steps, 3)
  config.per_step_bn = True
  config.learn_inner_lr = True
  config.rate_meta_lr = config.inner_lr / 1000
  config.meta_lr_schedule = 'cosine'
  set_mamlpp_schedules(config)


def set_mamlpp_schedules(config) -> None:
  """MAML++'s step schedules as fractions of `config.num_train_steps`:
  multi-step loss annealed over the first 20%, first order for 30%."""
  config.msl_anneal_steps = config.num_train_steps // 5
  config.first_order_steps = config.num_train_steps * 3 // 10


def set_imaml(config) -> None:
  """Switches `config` to iMAML (Rajeswaran et al. 2019) on its protocol.

  5-way: the settings of the authors' released Omniglot example
  (github.com/aravindr93/imaml_dev, examples/README.md): gradient descent
  on the proximal objective, 16 steps at 0.1, lambda = 2, 5 conjugate-
  gradient steps, Adam 1e-3, meta-batch 32, at least 20,000 meta-steps.
  20-way: the release gives no command; we keep lambda, the rate and CG
  steps, take 25 inner steps and the 20-way protocol's meta-batch of 16
  (our choice, not the authors'). Evaluation runs the same proximal steps
  (the release evaluates 16 plain steps, lambda = 0). The paper reports
  iMAML-GD at 99.16 +- 0.35% (5-way 1-shot) and 94.46 +- 0.42% (20-way
  1-shot).

  CG's system is damped as in the release (`cg_lambda` = 24): its
  `matrix_evaluator` solves (1 + cg_damping) g + H g / (lambda +
  lam_damping) = b with cg_damping = 1 and lam_damping = 10, i.e. (I +
  H/24) g = b / 2. The factor 1/2 is left out (Adam's step does not depend
  on the gradient's scale). The exact system I + H/2 is indefinite here:
  the support Hessian at phi* has eigenvalues down to about -6 already at
  initialization, and CG's residual stays near or above 1 (docs/imaml.md).
  The inner loop is the paper's (gradient descent on the proximal
  objective); `--config.inner_solver=release` runs the release's instead
  (16 plain steps on the support loss, then one step on the proximal term
  alone). The release's Adam epsilon (1e-3) is not copied.
  """
  config.train_step = 'imaml'
  del config.first_order  # The implicit gradient is exact at the optimum.
  del config.remat_inner_steps  # Nothing is differentiated through steps.
  config.inner_lr = 0.1
  config.num_inner_steps = 25 if config.ways == 20 else 16
  config.prox_lambda = 2.0
  config.num_cg_steps = 5
  config.cg_tol = 1e-5
  # A float field that may hold None (the exact system); a --config. flag
  # can set a float, None only a config file.
  config.cg_lambda = config_dict.placeholder(float)
  config.cg_lambda = 24.0
  config.eval_num_inner_steps = config.num_inner_steps
  config.inner_solver = 'proximal'  # or 'release' (the authors' code)


def get_config(arg=None):
  """Returns the config for `arg` (None or comma-separated words, above)."""
  words = [] if arg is None else [w.strip() for w in arg.split(',')]
  if (any(w not in _WORDS for w in words)
      or sum(w in PROTOCOLS for w in words) > 1
      or ('mamlpp' in words and 'imaml' in words)):
    raise ValueError(f'get_config arg={arg!r}: must be None or a comma-'
                     f'separated list of at most one of {PROTOCOLS}, '
                     "'mamlpp' or 'imaml', and 'quick'")
  config = ml_collections.ConfigDict()
  # Tasks: N-way K-shot episodes of the Vinyals split, rotations as classes.
  config.task = 'omniglot'
  config.data_dir = ''  # '' means $MAML_PLUGIN_DATA_DIR.
  config.train_split = 'vinyals_train'
  config.eval_split = 'vinyals_test'
  config.ways = 5
  config.num_support = 1  # images per class in the support set (K)
  config.num_query = 1  # query images per class in training (as MAML's code)
  # Model: Conv-4, 64 filters, stride-2 convolutions (MAML's Omniglot net).
  config.model = 'conv4'
  config.num_filters = 64
  config.conv_downsample = 'stride'
  # Batch norm with the statistics of the batch it sees (the reference code's
  # transductive setting); False: query examples are normalised with their
  # task's support statistics and never see each other.
  config.transductive = True
  # Rotate each class of a task by a random multiple of 90 degrees (the
  # reference code's augmentation, `reference`); the Vinyals split has the
  # rotations as classes of their own instead.
  config.rotate_classes = False
  # Meta-learning algorithm (a registered train step) and its inner loop.
  config.train_step = 'maml'
  config.inner_lr = 0.4
  config.num_inner_steps = 1
  config.first_order = False
  # Rematerialize each inner step in the backward pass (jax.checkpoint): the
  # same meta-gradient, memory flat in num_inner_steps.
  config.remat_inner_steps = False
  # Outer loop: Adam on the meta-loss.
  config.meta_batch_size = 32
  # Meta-gradient one task at a time (a lax.map over tasks): the same
  # gradient, 1.6-1.8x faster than vmapping all 32 tasks on CPU
  # (benchmarks/omniglot_speed.py); a multiple of the device count.
  config.task_batch_size = 1
  config.meta_lr = 1e-3
  config.num_train_steps = 60_000
  config.seed = 0
  # Meta-steps fused into one jitted call; intervals are multiples of it.
  config.steps_per_call = 50
  config.log_every_steps = 500
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 5_000
  config.max_checkpoints_to_keep = 3
  # Also save every this many seconds (for long steps); None: steps only.
  config.checkpoint_every_secs = config_dict.placeholder(float)
  # A NaN/Inf meta-loss or meta-gradient: 'stop' the run (the last good
  # checkpoint stays) or 'skip' the update and count it in the metrics.
  config.on_nonfinite = 'stop'
  # Held-out evaluation: 600 fixed tasks, 15 query images per class, 0..10
  # inner steps, evaluated one task at a time (a lax.map over tasks: about
  # 1.6x faster on CPU than vmapping 50, and little memory).
  config.eval_seed = 1_000_003
  config.num_eval_tasks = 600
  config.eval_num_query = 15
  config.eval_num_inner_steps = 10
  config.eval_task_batch_size = 1

  if '5w5s' in words or '20w5s' in words:
    config.num_support = 5
    config.num_query = 5
  if '20w1s' in words or '20w5s' in words:
    config.ways = 20
    config.meta_batch_size = 16
    config.inner_lr = 0.1
    config.num_inner_steps = 5
    config.eval_num_query = 5  # 20 classes x (5 + 5) images fit 20 per class
  if 'quick' in words:
    config.num_filters = 16
    config.meta_batch_size = 4
    config.num_train_steps = 20
    config.steps_per_call = 10
    config.log_every_steps = 10
    config.eval_every_steps = 20
    config.checkpoint_every_steps = 20
    config.num_eval_tasks = 20
    config.eval_num_query = 5
    config.eval_num_inner_steps = 3
  if 'reference' in words:
    set_reference(config)
  if 'mamlpp' in words:
    set_mamlpp(config)
  if 'imaml' in words:
    set_imaml(config)
    if 'quick' in words:
      config.num_inner_steps = 3
      config.eval_num_inner_steps = 3
  return config
