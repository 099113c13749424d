"""Training: a run from a configuration to its folder (:func:`train`), and its parts.

:mod:`.distributed` (torchrun processes), :mod:`.seeding` (reproducibility), :mod:`.optim` (the
paper's Adam recipe and schedules), :mod:`.loop` (training step, epoch, evaluation pass),
:mod:`.checkpoint` (the checkpoint format), :mod:`.run_folder` (the run folder's files), :mod:`.ood` (the
out-of-distribution score fitted when a run ends), :mod:`.train` (the run).
"""

from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .train import train

__all__ = ["load_checkpoint", "model_from_checkpoint", "save_checkpoint", "train"]
