"""Hyperparameter sweeps with Optuna (``dermogaze sweep``), by concern::

    space.py     the search space (YAML ``section.key: {KIND: VALUES}``) and the objective
    storage.py   Optuna's storage, the study, the output folder it owns
    run.py       run_sweep: trials until the study holds its budget, each a training run
    report.py    show_sweep: the trials table, the best configuration as a preset, Optuna's plots
"""

from .report import show_sweep
from .run import run_sweep
from .space import available_spaces, load_space, objective_value, parse_objective
from .storage import open_storage

__all__ = ["available_spaces", "load_space", "objective_value", "open_storage", "parse_objective", "run_sweep",
           "show_sweep"]
