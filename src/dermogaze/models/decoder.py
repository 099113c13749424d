"""The branch for recurrent segmentation of dermoscopic structures (paper §3.1.2, Fig. 3).

Run on every hidden state ``H_t`` of the attentive ConvLSTM. Three decoder blocks, symmetric to the
encoder (docs/design.md §4, at 224 px and width 1)::

    H_t (256, 28²) ─skip-avg with pool3─┬─ GAP (256) ─┐
                                         └─ ×2 ─ block 1: 256→256→256→128 at 56²
              ─skip-avg with pool2─┬─ GAP (128) ──────┤
                                    └─ ×2 ─ block 2: 128→128→64 at 112²
              ─skip-avg with pool1─┬─ GAP (64) ───────┤
                                    └─ ×2 ─ block 3: 64→64→1 at 224² ─ M_t (sigmoid)
                                          concat (448) ─ dense ─ ReLU ─ dense ─ pred_t (6 logits)

Each block is conv 3×3 + BN + ReLU, except the last conv, which is bare. The skip connection of
block ``k`` averages the decoder maps with the encoder's pooled map of the same shape,
``(x + skip) / 2`` (pool3 = ``X'`` before block 1, pool2 before block 2, pool1 before block 3); with
``skip=False`` the maps pass unchanged. The channel plan is derived from the encoder's
``skip_channels`` (each block ends with the channels of the next skip map), so any ``width`` works.

Decisions where docs/design.md §4 and the paper are silent:

* The ×2 upsampling is nearest-neighbour (``nn.Upsample``'s default; also the authors' code). The
  GAP "before each block" is taken right after the skip averaging: nearest upsampling replicates
  each cell four times, so this equals the GAP of the upsampled map exactly, at a quarter of the cost.
* Structure classifier: ``448 → 224 → 6`` (hidden size = half the input, as the authors' code),
  with a ReLU between the two dense layers (without it two dense layers are one linear map).
  It returns logits; the softmax of Fig. 3 lives in the loss / at inference.
* Conv biases are kept (as in torchvision's VGG); BN is trainable here even when the VGG parts
  have ``batch_norm="frozen"`` (there are no ImageNet statistics for a decoder). With
  ``batch_norm=False`` the BN layers are absent.
* The decoder runs once on all ``T`` steps, as one batch of ``T*B`` maps (step-major); the skip
  maps are broadcast over the steps, never copied. In training mode each batch norm still normalises
  every step's ``B`` maps with their own statistics and updates its running statistics once per
  step, in step order, so the batched decoder computes exactly what ``T`` separate calls compute,
  losses and gradients included. On the CPU it runs in channels-last layout (oneDNN's own: its
  convolutions then make no reorder copies).
* ``fused=True`` (the default) evaluates each block through :mod:`.fused_decoder`: the same function
  (up to float rounding) with fewer multiply-adds and, in training, less stored memory.
  ``fused=False`` runs the plain formulation of :meth:`DecoderBlock.forward`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structures import NUM_STRUCTURES
from .fused_decoder import fused_block_forward, make_upsample_taps, memory_format_of

#: Convolutions per decoder block: the encoder's (2, 2, 3) in reverse.
CONVS_PER_BLOCK: tuple[int, ...] = (3, 2, 2)


class DecoderBlock(nn.Sequential):
    """×2 nearest upsampling, then ``n`` conv 3×3 (+ BN + ReLU, except a bare last conv of the last block).

    Args:
        c_in, c_out: input and output channels (the inner convolutions keep ``c_in``).
        n_convs: convolutions in the block.
        batch_norm: BN after each conv but a bare last one.
        last: the last block (full resolution), whose last conv is bare (it gives the mask logits).
        fused: evaluate through :func:`~dermogaze.models.fused_decoder.fused_block_forward` (same
            function, faster; forward hooks on the block's layers then do not fire: hook the block).

    Shape:
        ``(N, c_in, h, w) -> (N, c_out, 2h, 2w)``.
    """

    def __init__(self, c_in: int, c_out: int, n_convs: int, batch_norm: bool, last: bool, fused: bool = True):
        layers: list[nn.Module] = []
        for j in range(n_convs):
            out = c_out if j == n_convs - 1 else c_in
            layers.append(nn.Conv2d(c_in, out, kernel_size=3, padding=1))
            if last and j == n_convs - 1:
                break
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.last = last
        self.fused = fused
        if fused:  # a constant of the fused path, moved with the block (not in the state dict)
            self.register_buffer("upsample_taps", make_upsample_taps(), persistent=False)

    def forward(self, x: Tensor, steps: int = 1) -> Tensor:  # type: ignore[override]
        """Run the block on ``x``, which holds ``steps`` equal groups of maps (step-major).

        A batch norm in training mode normalises each group with that group's own statistics and
        updates its running statistics once per group, in step order: exactly as ``steps``
        separate calls of the block would (the decoder run on each ``H_t``).
        """
        if self.fused:
            return fused_block_forward(self, x, steps)
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # (N, c_in, h, w) -> (N, c_in, 2h, 2w)
        for layer in self:
            if isinstance(layer, nn.BatchNorm2d) and layer.training and steps > 1:
                x = torch.cat([layer(group) for group in x.chunk(steps)], dim=0)  # statistics per step
            else:
                x = layer(x)
        return x


class StructureClassifier(nn.Module):
    """``pred_t`` from the concatenated pre-block GAPs: dense → ReLU → dense (Fig. 3).

    Shape:
        ``(N, in_features) -> (N, num_structures)`` logits.
    """

    def __init__(self, in_features: int, num_structures: int = NUM_STRUCTURES, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(1, in_features // 2)
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, num_structures)
        for fc in (self.fc1, self.fc2):
            nn.init.normal_(fc.weight, 0.0, 0.01)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class StructureDecoder(nn.Module):
    """Recurrent structure decoder and structure classifier (Fig. 3), batched over the ``T`` steps.

    Args:
        in_channels: channels of ``H_t`` (``C``); must equal the last skip's channels when ``skip``.
        skip_channels: channels of the encoder's pooled maps of blocks 1, 2, 3 (64, 128, 256 at width 1).
        skip: average with the encoder's pooled maps before each block.
        batch_norm: BN after each conv but the last.
        num_structures: classes of ``pred_t``: the size of the data's structure set (6 for ISIC 2017, 7 for 2018).
        fused: evaluate the blocks through :mod:`.fused_decoder` (see the module docstring).

    Shape:
        ``forward(hidden, skips)``: ``hidden`` ``(T, B, C, h, w)``, ``skips`` the encoder's
        ``(pool1, pool2, pool3)`` → mask logits ``(B, T, 8h, 8w)`` and structure logits ``(B, T, 6)``.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: Sequence[int],
        *,
        skip: bool = True,
        batch_norm: bool = True,
        num_structures: int = NUM_STRUCTURES,
        fused: bool = True,
    ):
        super().__init__()
        levels = tuple(reversed(tuple(skip_channels)))  # (256, 128, 64): input channels of blocks 1-3
        if len(levels) != len(CONVS_PER_BLOCK):
            raise ValueError(f"expected {len(CONVS_PER_BLOCK)} skip levels, got {len(levels)}")
        if levels[0] != in_channels:
            raise ValueError(f"hidden channels {in_channels} differ from the deepest skip's {levels[0]}")
        outs = (*levels[1:], 1)  # (128, 64, 1)
        self.skip = skip
        self.blocks = nn.ModuleList(
            DecoderBlock(c_in, c_out, n, batch_norm, last=(k == len(levels) - 1), fused=fused)
            for k, (c_in, c_out, n) in enumerate(zip(levels, outs, CONVS_PER_BLOCK, strict=True))
        )
        self.classifier = StructureClassifier(sum(levels), num_structures)
        for m in self.blocks.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, hidden: Tensor, skips: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Decode every ``H_t`` at once.

        Returns:
            ``mask_logits`` ``(B, T, H, W)`` (``M_t`` before the sigmoid) and ``structure_logits``
            ``(B, T, num_structures)`` (``pred_t`` before the softmax).
        """
        steps, batch = hidden.shape[:2]
        x = hidden.flatten(0, 1)  # (T, B, C, h, w) -> (T*B, C, h, w), step-major
        fmt = torch.channels_last if x.device.type == "cpu" else memory_format_of(x)
        x = x.contiguous(memory_format=fmt)  # oneDNN's native layout on CPU: no reorder copies
        pools = []
        for block, skip in zip(self.blocks, reversed(tuple(skips)), strict=True):  # pool3, pool2, pool1
            if self.skip:
                # (T, B, c, h', w') + (B, c, h', w') broadcast over T -> (T*B, c, h', w')
                skip = skip.contiguous(memory_format=fmt)
                x = (x.unflatten(0, (steps, batch)) + skip).mul_(0.5).flatten(0, 1).contiguous(memory_format=fmt)
            pools.append(x.mean(dim=(2, 3)))  # GAP before the block (T*B, c)
            x = block(x, steps)  # ×2 nearest upsampling and the block (T*B, c_out, 2h', 2w')
        # (T*B, 1, H, W) -> (T, B, H, W) -> (B, T, H, W)
        mask_logits = x[:, 0].unflatten(0, (steps, batch)).transpose(0, 1).contiguous()
        structure = self.classifier(torch.cat(pools, dim=1))  # (T*B, 448) -> (T*B, 6)
        structure_logits = structure.view(steps, batch, -1).transpose(0, 1).contiguous()  # (B, T, 6)
        return mask_logits, structure_logits
