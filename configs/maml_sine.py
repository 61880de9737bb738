"""MAML on sinusoid regression, the protocol of Finn et al. (2017), sec. 5.1.

Run it (meta-train, then evaluate on 600 held-out tasks)::

  python -m maml_plugin.main --config=configs/maml_sine.py --workdir=/tmp/maml_sine
  python -m maml_plugin.evaluate --config=configs/maml_sine.py --workdir=/tmp/maml_sine

`--config=configs/maml_sine.py:quick` is a seconds-long variant for tests;
any field can be overridden, e.g. `--config.meta_batch_size=10`.

The default differs from the paper in its meta-objective, its Adam step
size and its inner rates, not in the task or the model: MAML meta-trained
on the mean of the query losses after one, two and three inner steps (the
multi-step loss of MAML++, held uniform; `set_multi_step_loss`) instead of
after one step only, with Adam at 2e-3 instead of 1e-3, and inner rates
learned per layer and step from the paper's alpha = 0.01 (MAML++'s LSLR). Trained on one step, the initialization sharpens until
ten inner steps diverge on some held-out tasks (docs/sinusoid.md). `paper`
restores the paper's settings exactly, alone or with the other words, as
does naming the algorithm::

  --config=configs/maml_sine.py:paper          # MAML, one inner step
  --config=configs/maml_sine.py:maml           # the same
  --config=configs/maml_sine.py:paper,quick

Another algorithm of the MAML family on the same tasks, model and
evaluation: name it in the argument, alone or with `quick` (and `paper`,
which changes ANIL's ten training steps back to one)::

  --config=configs/maml_sine.py:reptile        # fomaml, reptile, metasgd,
  --config=configs/maml_sine.py:anil,quick     # anil, mamlpp, imaml
"""

import ml_collections
from ml_collections import config_dict


ALGORITHMS = ('maml', 'fomaml', 'reptile', 'metasgd', 'anil', 'mamlpp',
              'imaml')
WORDS = ('quick', 'paper')

# The paper's inner rate alpha (Finn et al. 2017, sec. 5.1).
PAPER_INNER_LR = 0.01
# The inner steps of MAML's default meta-objective (`set_multi_step_loss`)
# and its Adam step size (the paper's: 1e-3).
MSL_INNER_STEPS = 3
MSL_META_LR = 2e-3
# The Adam step size of the default's learned inner rates (LSLR): a rate
# (0.01 at the start) moves by at most 0.04 per 10,000 meta-steps. At the
# weights' 2e-3 the rates ran away within a few thousand steps and ten
# inner steps diverged; at 3e-7 they barely moved and one step fitted no
# faster than fixed rates; at 1e-6 one step was still above 0.40 at the
# first evaluation (10,000 meta-steps) on one run of 16 (docs/sinusoid.md).
MSL_RATE_META_LR = 4e-6
# The default's bound on the meta-gradient's global norm before Adam: 2x
# the largest per-step norm of a healthy run after 50,000 meta-steps (5.1;
# median 0.9). A meta-batch whose inner steps overshoot can have a norm of
# 1e17; unclipped, it wrecks the initialization and inflates Adam's second
# moment so far that training stalls (docs/sinusoid.md).
MAX_META_GRAD_NORM = 10.0
# ANIL's inner steps in training, unless `paper` (one).
ANIL_INNER_STEPS = 10


def set_multi_step_loss(config) -> None:
  """MAML meta-trained on the mean query loss after each of 1, 2 and 3 steps.

  The paper's MAML, trained on the query loss after ONE inner step and
  evaluated after ten, sharpens its initialization until the top
  eigenvalue of many tasks' support-loss Hessian passes 2 / alpha; ten
  steps then diverge on a few tasks, which ones decided by rounding
  (docs/sinusoid.md). Averaging the query losses after steps 1, 2 and 3
  (MAML++'s multi-step loss, Antoniou et al. 2019, here held uniform
  instead of annealed) puts overshooting later steps into the objective
  while keeping the one-step loss in it. Adam at 2e-3 (the paper: 1e-3)
  brings the first periodic evaluation (10,000 meta-steps) within 0.12
  on every seed measured. The inner rates are learned per layer and step
  (MAML++'s LSLR), from alpha, by their own slow Adam step
  (`MSL_RATE_META_LR`): with fixed rates one step fitted too slowly (1-step
  MSE above 0.40 at 20,000-30,000 meta-steps on 4 of 15 runs). It runs as
  the 'mamlpp' train step with MAML++'s other parts off: exact second
  order from the first step, a constant meta learning rate. Measured over
  five seeds and three settings: docs/sinusoid.md. `config.train_step` is
  set by the caller.
  """
  del config.first_order  # Second order throughout (first_order_steps=0).
  config.num_inner_steps = MSL_INNER_STEPS
  config.msl_anneal_steps = config_dict.placeholder(int)  # None: uniform.
  config.learn_inner_lr = True
  config.rate_meta_lr = MSL_RATE_META_LR
  config.first_order_steps = 0
  config.meta_lr = MSL_META_LR
  config.max_meta_grad_norm = MAX_META_GRAD_NORM
  # The three inner steps compiled unrolled, not as a loop: the same
  # gradient, ~1.2x the meta-steps/s of this small MLP (the loop's buffers
  # of per-step residuals cost more than its few steps compute).
  config.unroll_inner_steps = True


def _registered(words) -> tuple[str, ...]:
  """The registered train steps, read only when a word is none of ours: any
  algorithm registered later (a new module of `maml_plugin.algorithms`, or
  a user's) runs on these tasks at its own defaults, ``:NAME``."""
  if all(w in WORDS or w in ALGORITHMS for w in words):
    return ()
  from maml_plugin import algorithms  # pylint: disable=g-import-not-at-top
  return tuple(algorithms.TRAIN_STEPS.names())


def train_step_of(words) -> str:
  """The registered train step the argument's `words` run: the algorithm
  named, else 'maml' with `paper`, else 'mamlpp' (MAML on the multi-step
  loss with learned inner rates, `set_multi_step_loss`)."""
  named = [w for w in words if w not in WORDS]
  if named:
    return named[0]
  return 'maml' if 'paper' in words else 'mamlpp'


def get_config(arg=None):
  """Returns the config.

  Args:
    arg: None (MAML with the three-step multi-step loss, the stable
      default) or a comma-separated list of `WORDS` ('quick': seconds
      long; 'paper': the paper's settings, for MAML and ANIL one training
      step) and at most one of `ALGORITHMS`, each at its paper's settings
      but ANIL's ten training steps ('maml': the paper's MAML, the same as
      'paper'), or of any other registered train step, at its defaults.
  """
  words = [] if arg is None else [w.strip() for w in arg.split(',')]
  unknown = [w for w in words if w not in WORDS and w not in ALGORITHMS
             and w not in _registered(words)]
  algorithms = [w for w in words if w not in WORDS and w not in unknown]
  if unknown or len(algorithms) > 1:
    raise ValueError(f"get_config arg={arg!r}: must be None or a comma-"
                     f"separated list of {WORDS} and one of {ALGORITHMS}")
  config = ml_collections.ConfigDict()
  # Tasks: y = A sin(x - phase), K support and K query points per task.
  config.task = 'sinusoid'
  config.num_support = 10
  config.num_query = 10
  # Model: 1-40-40-1 ReLU MLP.
  config.model = 'mlp'
  config.hidden_sizes = (40, 40)
  # Meta-learning algorithm (a registered train step) and its inner loop.
  # What runs: by default 'mamlpp', the train step of MAML trained on the
  # multi-step loss with learned inner rates and MAML++'s other parts off
  # (`set_multi_step_loss`);
  # `paper` runs 'maml', the paper's MAML; a named algorithm runs itself.
  config.train_step = train_step_of(words)
  config.inner_lr = PAPER_INNER_LR
  config.num_inner_steps = 1
  config.first_order = False
  # Rematerialize each inner step in the backward pass (jax.checkpoint): the
  # same meta-gradient, memory flat in num_inner_steps.
  config.remat_inner_steps = False
  # Outer loop: Adam on the meta-loss.
  config.meta_batch_size = 25
  # Tasks per meta-gradient batch (a lax.map over equal task batches, the
  # same gradient); None: all tasks in one vmap, the fastest for this MLP on
  # CPU. An int that divides meta_batch_size, e.g. 32 on a GPU.
  config.task_batch_size = config_dict.placeholder(int)
  config.meta_lr = 1e-3
  # The meta-gradient's global norm is clipped to this before Adam; None:
  # never (the paper; from a flag, which cannot set None, 1e30 is the same).
  config.max_meta_grad_norm = config_dict.placeholder(float)
  config.num_train_steps = 70_000
  config.seed = 0
  # Meta-steps fused into one jitted call (a scan); periodic intervals must
  # be multiples of it.
  config.steps_per_call = 100
  config.log_every_steps = 1_000
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 10_000
  config.max_checkpoints_to_keep = 3
  # Also save every this many seconds (for long steps); None: steps only.
  config.checkpoint_every_secs = config_dict.placeholder(float)
  # A NaN/Inf meta-loss or meta-gradient: 'stop' the run (the last good
  # checkpoint stays) or 'skip' the update and count it in the metrics.
  config.on_nonfinite = 'stop'
  # A finite blow-up (maml_plugin/spikes.py): a meta-loss above spike_factor
  # times the median of the previous spike_window steps, or a held-out loss
  # above eval_spike_factor times the previous 3 evaluations' median:
  # 'warn' (one line), 'stop', or 'rollback' to the checkpoint before it.
  config.on_spike = 'warn'
  config.spike_factor = 100.0
  config.eval_spike_factor = 2.0
  config.spike_window = 1_000
  # Held-out evaluation: fixed seeded tasks, 100 query points, 0..10 steps.
  config.eval_seed = 1_000_003
  config.num_eval_tasks = 600
  config.eval_num_query = 100
  config.eval_num_inner_steps = 10
  config.num_plot_tasks = 3

  if 'quick' in words:
    config.num_train_steps = 200
    config.steps_per_call = 10
    config.log_every_steps = 50
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 100
    config.num_eval_tasks = 50

  algorithm = config.train_step
  if not algorithms and 'paper' not in words:
    set_multi_step_loss(config)
  elif algorithm == 'fomaml':
    del config.first_order  # FOMAML is first order by definition.
    del config.remat_inner_steps  # Nothing to rematerialize.
  elif algorithm == 'reptile':
    # Nichol et al. (2018): Adam (beta1 = 0) in the inner loop on all of a
    # task's examples; plain SGD outer steps, size annealed linearly to 0.
    del config.first_order
    del config.remat_inner_steps  # No meta-gradient through the inner loop.
    config.inner_optimizer = 'adam'
    config.num_inner_steps = 5
    config.meta_optimizer = 'sgd'
    config.meta_lr = 1.0
    config.meta_lr_schedule = 'linear'
  elif algorithm == 'metasgd':
    del config.first_order  # Second order: the rates need it.
    # The rates' outer step size; None: meta_lr.
    config.rate_meta_lr = config_dict.placeholder(float)
    # The query loss after the last step only (0, the paper), or the mean
    # after each of steps 1..N (None), or annealed to the last over N steps.
    config.msl_anneal_steps = 0
    if 'paper' not in words:
      # Trained on one step, learned rates overshoot over ten (NaN); on the
      # mean over steps 1..3 an overshooting step costs in training what it
      # does at evaluation (docs/sinusoid.md).
      config.num_inner_steps = MSL_INNER_STEPS
      config.msl_anneal_steps = config_dict.placeholder(int)
      # As MAML++'s learned rates: Adam steps of ~0.1% of a rate. At the
      # weights' 1e-3 the rates outgrew the stable range (inf at meta-step
      # 570).
      config.rate_meta_lr = 1e-5
  elif algorithm == 'anil':
    # The head: the output layer of the MLP.
    config.head_filter = f'^layers/{len(config.hidden_sizes)}/'
    if 'paper' not in words:
      # Meta-trained on the ten inner steps it is evaluated with: trained on
      # one, the body scales the head's features until ten steps at alpha
      # diverge on some tasks (docs/sinusoid.md). `paper`: one step.
      config.num_inner_steps = ANIL_INNER_STEPS
    if 'quick' in words and 'paper' not in words:
      # 200 meta-steps are too few for the body to tame the head's steps
      # at 0.01: on the 50 held-out tasks one step raised the mean MSE
      # (3.33 before, 3.85 after; 4,050 after 10). At 0.003 it falls with
      # every step (2.92 before, 2.90 after 1, 2.82 after 10). `paper`
      # keeps the paper's 0.01: `quick` changes only the budget there.
      config.inner_lr = 0.003
  elif algorithm == 'mamlpp':
    # Antoniou et al. (2019): MSL annealed over the first 10% of training,
    # first order for the first third, cosine-annealed meta learning rate,
    # LSLR. The rates (~0.01) take Adam steps of rate_meta_lr=1e-5, ~0.1% of
    # a rate per meta-step: at 1e-3 and 1e-4 (the weights' step size, and
    # 1% of a rate) learned rates outgrew the stable range of the inner loop
    # and training went to NaN; at 1e-5 it was stable over 70,000 steps and
    # beat LSLR off (benchmarks/RESULTS.md).
    del config.first_order
    config.num_inner_steps = 5
    config.learn_inner_lr = True
    config.rate_meta_lr = 1e-5
    config.msl_anneal_steps = config.num_train_steps // 10
    config.first_order_steps = config.num_train_steps // 3
    config.meta_lr_schedule = 'cosine'
  elif algorithm == 'imaml':
    # Rajeswaran et al. (2019) report no sinusoids; the paper's recipe
    # (gradient descent on the proximal objective, 5 CG steps) with lambda
    # and steps chosen for this MLP, not tuned: its support losses have
    # directions of negative curvature; at lambda = 2 CG's residual stayed
    # ~0.4-0.5 and 3,000 meta-steps barely lowered the query loss, at 10 it
    # is ~0.1 (docs/imaml.md). 16 steps at MAML's rate 0.01 contract the
    # inner error by (1 - 0.01 * 10)^16 ~ 0.2 in the flattest directions.
    # Evaluation takes the same proximal steps.
    del config.first_order  # The implicit gradient is second order.
    del config.remat_inner_steps  # Nothing is differentiated through steps.
    config.num_inner_steps = 16
    config.prox_lambda = 10.0
    config.num_cg_steps = 5
    config.cg_tol = 1e-5
    # At initialization the support loss's top Hessian eigenvalue is ~250
    # (median over tasks; up to ~500), past 2 / 0.01 - lambda = 190: plain
    # gradient descent at 0.01 diverged and 5 of 6 runs hit NaN within
    # 7,500 meta-steps. Backtracking (the step halved up to 8 times until
    # the proximal objective falls) keeps every inner solve bounded. With
    # the exact system, training then sharpened the support losses and
    # let CG's residual grow until no step passed (by ~15,000 meta-steps);
    # CG's system damped to lambda 50 (as Omniglot damps it) held
    # (docs/imaml.md). The meta-gradient is clipped as the default's.
    config.inner_backtracks = 8
    config.cg_lambda = 50.0
    config.max_meta_grad_norm = MAX_META_GRAD_NORM
    config.inner_solver = 'proximal'  # or 'release' (the authors' code)
  return config
