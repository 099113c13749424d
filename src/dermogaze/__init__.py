"""dermogaze: explainable skin-lesion diagnosis from sequences of gazes (Esteve-Cogollos & Fernández-Torres).

The dataflow, one package or module per stage::

    data/        ISIC 2017 reader, synthetic data, cache, Dataset, transforms, image files
    models/      encoder → attentive ConvLSTM (Eqs. 1-9) → structure decoder (Fig. 3), diagnosis (Fig. 4)
    losses.py    matching, softIoU, focal loss, balancing, the multi-task loss (Eqs. 10-16)
    metrics.py   AUC/AP, mAP@IoU, confusion matrix, Jaccard, Task 2 superpixel AUC (§4.1)
    training/    processes, seeding, optimiser, step/epoch/evaluation loops, checkpoints, the run
    evaluate.py  a checkpoint on a split;  explain.py  gazes per image;  plots.py  the figures
    demo.py      the whole pipeline on the built-in data;  cli.py  the ``dermogaze`` command

The public API::

    from dermogaze import build_model, GazeLoss, load_checkpoint, explain_image
"""

__version__ = "0.1.0"

from .explain import explain_image  # noqa: E402
from .losses import GazeLoss  # noqa: E402
from .models import GazeNet, GazeOutput, build_model, list_models  # noqa: E402
from .training.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402

__all__ = [
    "GazeLoss",
    "GazeNet",
    "GazeOutput",
    "build_model",
    "explain_image",
    "list_models",
    "load_checkpoint",
    "model_from_checkpoint",
]
