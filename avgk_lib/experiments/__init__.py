"""Every experiment of both papers as data: settings per preset, methods with tuning grids.

An :class:`Experiment` lists its **methods** (a loss, fixed options and a small grid of its own
sensitive knobs) and, for each **preset** it defines, its **settings** (a dataset with options, an
optimisation recipe, the K values). One function, :func:`expand`, turns an experiment, a preset,
seeds and the chosen hyperparameters into :class:`Run` objects; nothing else branches on presets.

Fair comparison (DESIGN section 11):

* **equal tuning budget**: every method is tuned on the *validation* split over the same learning-
  rate grid (:attr:`Preset.lr_grid`) crossed with the grid of its own knobs, at one tuning seed
  (:data:`TUNING_SEED`, a data draw of its own); the chosen values are then re-run over the
  evaluation seeds. :func:`tune` returns the grid, the validation score of every point and the
  choice; references record it under ``"tuning"``. For the imbalanced noised loss the learning
  rate grid is on ``lr x scale`` (its loss is ``scale`` times a hinge, so ``lr x scale`` is its
  effective step);
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

from ..evaluation import k_label
from .catalog import (
    CPU_FMNIST,
    CPU_SYNTHETIC,
    EXPERIMENTS,
    K_DEPENDENT,
    LR_GRID,
    P2_LOSSES,
    SYNTHETIC_100,
    SYNTHETIC_1000,
)
from .grid import SEEDED_OPTIONS, chosen_from_reference, expand, get_experiment, presets_of, runs_of, tuning_key
from .results import RESULTS_DIR, load_reference, save_reference, summarize
from .runner import run_dir, run_experiment, run_row, train_or_load
from .spec import PRESETS, TUNING_SEED, Experiment, Method, Preset, Run, Setting
from .tuning import MAX_EXTENSIONS, tune

__all__ = [
    "CPU_FMNIST",
    "CPU_SYNTHETIC",
    "EXPERIMENTS",
    "K_DEPENDENT",
    "LR_GRID",
    "MAX_EXTENSIONS",
    "P2_LOSSES",
    "PRESETS",
    "RESULTS_DIR",
    "SEEDED_OPTIONS",
    "SYNTHETIC_100",
    "SYNTHETIC_1000",
    "TUNING_SEED",
    "Experiment",
    "Method",
    "Preset",
    "Run",
    "Setting",
    "chosen_from_reference",
    "expand",
    "get_experiment",
    "k_label",
    "load_reference",
    "presets_of",
    "run_dir",
    "run_experiment",
    "run_row",
    "runs_of",
    "save_reference",
    "summarize",
    "train_or_load",
    "tune",
    "tuning_key",
]
