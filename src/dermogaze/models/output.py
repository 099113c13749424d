"""What every gaze-network variant returns (one dataclass, so loss, metrics and explanation need no glue)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class GazeOutput:
    """Outputs of a forward pass.

    Attributes:
        logits: diagnosis logits ``(B, 2)``, index 1 = melanoma.
        attention: attention maps ``A_t`` of Eq. 2, ``(B, T, h, w)``, each map sums to one over
            its ``h*w`` cells (``h = w = image_size / 8``). ``None`` for variants without attention.
        masks: structure masks ``M_t`` after the sigmoid, ``(B, T, H, W)`` at input resolution.
            ``None`` for variants without a decoder.
        mask_logits: the same masks before the sigmoid, ``(B, T, H, W)`` (``None`` without decoder).
        structure_logits: structure-classifier logits ``pred_t`` before the softmax, ``(B, T, 6)``.
            ``None`` for variants without a decoder.
    """

    logits: Tensor
    attention: Tensor | None = None
    masks: Tensor | None = None
    mask_logits: Tensor | None = None
    structure_logits: Tensor | None = None

    @property
    def melanoma_margin(self) -> Tensor:
        """Log-odds of melanoma ``(B,)``: ``logit_melanoma - logit_benign``, in at least float32 (reduced-precision
        logits are cast first, so the probabilities and their calibration never run in bf16 or fp16)."""
        logits = self.logits.to(torch.promote_types(self.logits.dtype, torch.float32))  # (B, 2)
        return logits[:, 1] - logits[:, 0]

    @property
    def melanoma_prob(self) -> Tensor:
        """Probability of melanoma ``(B,)``: the two-way softmax of the logits, ``sigmoid(margin)``."""
        return self.calibrated_melanoma_prob(1.0)

    def calibrated_melanoma_prob(self, temperature: float) -> Tensor:
        """Probability of melanoma ``(B,)`` after temperature scaling: ``sigmoid(margin / T)``.

        ``T`` is fitted on the validation split after each training epoch and stored in the checkpoint
        (:func:`dermogaze.metrics.clinical.fit_temperature`); being monotonic, it leaves the ranking (the AUC)
        unchanged. ``T = 1`` is the network's own probability.
        """
        return torch.sigmoid(self.melanoma_margin / temperature)

    @property
    def has_decoder(self) -> bool:
        return self.masks is not None

    def float(self) -> GazeOutput:
        """The outputs in float32 (after autocast: the loss and metrics never run in reduced precision)."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.float() for k, v in tensors.items() if v is not None})
