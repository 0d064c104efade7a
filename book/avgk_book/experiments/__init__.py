"""Every experiment of both papers as data: settings per preset, methods with tuning grids.

An :class:`Experiment` lists its **methods** (a loss, fixed options and a small grid of its own
sensitive knobs) and, for each **preset** it defines, its **settings** (a dataset with options, an
optimisation recipe, the K values). One function, :func:`expand`, turns an experiment, a preset,
seeds and the chosen hyperparameters into :class:`GridRun` objects; nothing else branches on presets.

Two protocols (``book/protocol.md``), the ``arm`` of every function and run:

* **paper arm** (``arm="paper"``, :attr:`Preset.paper`): each method with its paper's fixed recipe
  scaled down, nothing tuned: P1's recipe (:func:`p1_recipe`: SGD Nesterov 0.9, weight decay 1e-4,
  batch 64, lr 0.1, step decay at 50% and 75%) with P1's values (``Method.paper``), the two-head loss
  with its own defaults, the weakly supervised baselines on the same recipe (one recipe per
  comparison; their known handicaps named in :data:`PAPER_HANDICAPS`);
* **tuned arm** (``arm="tuned"``): an **equal tuning budget** on the *validation* split, 9 trials
  per method and setting (3 learning rates x 3 values of its own knob; cross-entropy 9 learning
  rates, :data:`CE_LR_GRID`), each trial on the tuning draws :data:`TUNING_SEEDS` and scored by
  its mean; **every knob bracketed** (a choice at a grid edge extends that knob, at most twice,
  within :data:`KNOB_LIMITS`; an unbracketed choice is flagged). :func:`tune` returns the grid,
  the validation score of every point, the budget and the choice; references record it under
  ``"arms": {"tuned": {"tuning": ...}}``. For the scaled-logit losses (imbalanced noised top-K,
  LDAM) the lr grid is on ``lr x scale`` (their effective step); the multi-label baselines get a
  loss weight (:data:`LOSS_WEIGHTS`) against the C-times weight-decay coupling;
* **randomness per seed**: a run's seed draws its initialisation, batch order *and* its data:
  the synthetic samples and their label noise (``sample_seed``), Fashion-MNIST's split, subsample
  and noise pattern (``split_seed``, ``noise_seed``) and CIFAR-100's split and noise;
* presets: ``smoke`` (seconds, CI: numbers are not findings), ``cpu`` (a 2-core laptop), ``colab``
  (one free Colab GPU session per chapter) and ``gpu`` (the papers' full recipes). An experiment
  raises on a preset it does not define; there is no fallback.

:func:`run_experiment` trains every (run, seed) that is not cached yet. A run lives in
``$AVGK_CACHE_DIR/runs/<config fingerprint>``: a finished run is reloaded, an interrupted one
resumed from its last checkpoint, an unreadable one re-run (with a warning naming the folder).
"""

from avgk_lib.metrics import k_label

from .catalog import (
    CE_LR_GRID,
    CHAPTERS,
    CPU_FMNIST,
    CPU_SYNTHETIC,
    EXPERIMENTS,
    K_DEPENDENT,
    KNOB_LIMITS,
    LOSS_WEIGHTS,
    LR_GRID,
    PAPER_HANDICAPS,
    SWEEP_SIZES,
    SYNTHETIC_100,
    SYNTHETIC_1000,
    p1_recipe,
    step_milestones,
    sweep_epochs,
)
from .grid import (
    chosen_from_reference,
    expand,
    get_experiment,
    paper_point,
    preset_table,
    reference_tuning,
    tuning_key,
)
from .results import RESULTS_DIR, load_arm, load_reference, save_arms_reference, summarize
from .runner import run_dir, run_experiment, run_row, train_or_load_many
from .spec import ARMS, PRESETS, TUNING_SEEDS, Experiment, GridRun, Method, Preset, Setting
from .tuning import MAX_EXTENSIONS, tune

__all__ = [
    "ARMS",
    "CE_LR_GRID",
    "CHAPTERS",
    "KNOB_LIMITS",
    "LOSS_WEIGHTS",
    "TUNING_SEEDS",
    "p1_recipe",
    "paper_point",
    "preset_table",
    "reference_tuning",
    "save_arms_reference",
    "step_milestones",
    "sweep_epochs",
    "CPU_FMNIST",
    "CPU_SYNTHETIC",
    "EXPERIMENTS",
    "K_DEPENDENT",
    "LR_GRID",
    "PAPER_HANDICAPS",
    "SWEEP_SIZES",
    "MAX_EXTENSIONS",
    "PRESETS",
    "RESULTS_DIR",
    "SYNTHETIC_100",
    "SYNTHETIC_1000",
    "Experiment",
    "Method",
    "Preset",
    "GridRun",
    "Setting",
    "chosen_from_reference",
    "expand",
    "get_experiment",
    "k_label",
    "load_arm",
    "load_reference",
    "run_dir",
    "run_experiment",
    "run_row",
    "summarize",
    "train_or_load_many",
    "tune",
    "tuning_key",
]
