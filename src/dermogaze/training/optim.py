"""The optimiser of the paper's recipe (§4.1, docs/design.md §5) and the learning-rate schedules.

Adam with betas (0.92, 0.96) and weight decay 1e-6, one learning rate per part of the network
(:meth:`~dermogaze.models.GazeNet.parameter_groups`): encoder 0, attentive ConvLSTM 1e-2, both
branches 1e-4 (:func:`learning_rates`).

Decisions where the paper and docs/design.md are silent:

- **Frozen parts.** A group whose learning rate is 0 is left out of the optimiser and frozen (the
  encoder through :meth:`~dermogaze.models.GazeNet.freeze_encoder`: no gradient, batch-norm
  statistics fixed, no backward pass through it; the same weights as an lr of 0, at a fraction of
  the cost). Without pretrained encoder weights (``model.weights`` unset) a learning rate of 0 for
  the encoder is refused, because a frozen random encoder cannot learn (docs/design.md §5); the message
  suggests ``-o train.lr_encoder=1e-4`` (an error rather than a silent change of the recipe). A
  resumed run's encoder holds the checkpoint's trained weights, so there a learning rate of 0 is
  allowed whatever ``model.weights`` says.
- **Schedules.** ``train.lr_schedule="constant"`` is the paper's; ``"cosine"`` anneals every
  group's rate per step from its base value to 0. The factor depends only on the position in the
  run, so a resumed run needs no scheduler state. On resume the rates, betas and weight decay come
  from the configuration, not from the saved optimiser state (:func:`apply_hyperparameters`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from ..config import LR_SCHEDULE_NAMES, Config, TrainConfig
from ..errors import DermogazeError
from ..models import GazeNet

logger = logging.getLogger(__name__)

#: Learning-rate schedules: the factor on every group's base rate at training progress p ∈ [0, 1).
LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda p: 1.0,  # the paper's recipe
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),  # from the base rates down to 0
}
assert tuple(LR_SCHEDULES) == LR_SCHEDULE_NAMES, "config.LR_SCHEDULE_NAMES names the schedules defined here"


def learning_rates(t: TrainConfig) -> dict[str, float]:
    """The base learning rate of each parameter group (``GazeNet.parameter_groups`` names)."""
    return {"encoder": t.lr_encoder, "attention": t.lr_attention, "branches": t.lr_branches}


def build_optimizer(model: GazeNet, cfg: Config, *, pretrained_encoder: bool | None = None) -> torch.optim.Adam:
    """Adam over ``model.parameter_groups()`` with the per-group rates of :func:`learning_rates`.

    Groups with a learning rate of 0 are frozen and left out (see the module docstring).

    Args:
        model: the network.
        cfg: the configuration (``train`` rates, betas, weight decay).
        pretrained_encoder: whether the encoder's weights are trained ones, so that a learning rate
            of 0 may freeze it; None means "``model.weights`` is set". A resumed run passes True
            (its weights come from the checkpoint).

    Raises:
        DermogazeError: a frozen random encoder, or nothing to train.
    """
    t = cfg.train
    lrs = learning_rates(t)
    if pretrained_encoder is None:
        pretrained_encoder = bool(cfg.model.weights)
    if t.lr_encoder == 0 and not pretrained_encoder:
        raise DermogazeError(
            "model.weights is not set, so the encoder starts from random weights and must train (lr > 0): "
            "pass -o train.lr_encoder=1e-4, or -o model.weights=imagenet (or a path to vgg16_bn weights) "
            "to keep the paper's frozen encoder"
        )
    if t.lr_encoder == 0:
        model.freeze_encoder(True)  # no gradient, BN statistics fixed, no backward through it
    groups = []
    for name, params in model.parameter_groups().items():
        if not params:
            continue
        if lrs[name] == 0:
            for p in params:
                p.requires_grad_(False)
            logger.info("%s frozen (lr 0): %d tensors", name, len(params))
            continue
        groups.append({"params": params, "lr": lrs[name], "initial_lr": lrs[name], "name": name})
    if not groups:
        raise DermogazeError("every learning rate is 0: nothing to train")
    return torch.optim.Adam(groups, betas=tuple(t.betas), weight_decay=t.weight_decay)


def apply_hyperparameters(optimizer: torch.optim.Optimizer, t: TrainConfig) -> None:
    """Set each group's base rate, betas and weight decay from ``t`` (after loading a saved state)."""
    lrs = learning_rates(t)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = lrs[group["name"]]
        group["betas"] = tuple(t.betas)
        group["weight_decay"] = t.weight_decay


def lr_schedule(name: str, epoch: int, epochs: int, steps: int) -> Callable[[int], float]:
    """Factor on the base learning rates for batch ``i`` of ``epoch`` (1-based) of ``epochs``.

    The factor is a function of the position in the run only, so a resumed run follows the same
    schedule; extending ``train.epochs`` on resume stretches a cosine schedule from that point on.

    Args:
        name: a key of :data:`LR_SCHEDULES`.
        epoch: the current epoch, 1-based.
        epochs: total epochs of the run.
        steps: optimiser steps per epoch.

    Raises:
        DermogazeError: unknown schedule.
    """
    if name not in LR_SCHEDULES:
        raise DermogazeError(f"unknown train.lr_schedule {name!r}: expected one of {', '.join(LR_SCHEDULES)}")
    fn = LR_SCHEDULES[name]
    total = max(epochs * steps, 1)
    return lambda i: fn(((epoch - 1) * steps + i) / total)
