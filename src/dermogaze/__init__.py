"""dermogaze: explainable skin-lesion diagnosis from sequences of gazes (Esteve-Cogollos & Fernández-Torres).

The dataflow, image → gazes → structures and diagnosis → loss, metrics and explanation, is the
layout (the library first, then what runs it; docs/design.md is the design document)::

    config.py structures.py errors.py files.py version.py runtime.py interrupt.py allocator.py
                  the ground floor
    data/         readers (isic2017, isic2018, labels_only), prepare (writer), cache (reader), dataset,
                  transforms, synth/ (the built-in synthetic data)
    models/       encoder → attentive ConvLSTM (Eqs. 1-9) → structure decoder (Fig. 3), diagnosis (Fig. 4)
    losses.py     matching, softIoU, focal loss, balancing, the multi-task loss (Eqs. 10-16)
    metrics/      metric functions beside their accumulators: diagnosis, structures, clinical statistics,
                  explanation measures, scanpaths
    training/     processes, seeding, optimiser, sampling, loops, the checkpoint format, the run folder
    evaluation/   evaluate a checkpoint, compare runs, report tables, plots
    explain/      gaze records and figures per image
    apps/         predict (challenge files), export (ONNX), serve/ (the viewer)
    experiments/  demo/ (and its report), table3, sweep/, the child-process launcher
    cli/          the ``dermogaze`` command, one module per command group

The public API (each name imported when first used, so that ``import dermogaze`` is instant)::

    from dermogaze import build_model, GazeLoss, load_checkpoint, explain_image
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

#: Public name → the module that defines it.
_API = {
    "GazeLoss": "dermogaze.losses",
    "GazeNet": "dermogaze.models",
    "GazeOutput": "dermogaze.models",
    "build_model": "dermogaze.models",
    "list_models": "dermogaze.models",
    "explain_image": "dermogaze.explain.record",
    "load_checkpoint": "dermogaze.training.checkpoint",
    "model_from_checkpoint": "dermogaze.training.checkpoint",
}

__all__ = [
    "GazeLoss",
    "GazeNet",
    "GazeOutput",
    "__version__",
    "build_model",
    "explain_image",
    "list_models",
    "load_checkpoint",
    "model_from_checkpoint",
]

if TYPE_CHECKING:
    from .explain.record import explain_image
    from .losses import GazeLoss
    from .models import GazeNet, GazeOutput, build_model, list_models
    from .training.checkpoint import load_checkpoint, model_from_checkpoint


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dermogaze' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
