"""The branch for skin lesion classification (paper §3.1.3, Fig. 4) and the tops of the VGG baselines.

Diagnosis branch of the decoder variants (``deco_gap_3``, ``deco_gap_5``; also ``vgg_attconvlstm_gap``)::

    X̃'_{T-1} ─ VGG-16-BN blocks 4-5 (features[24:44]) ─ GAP (512) ─┐
    GAP(X̃'_0) ... GAP(X̃'_{T-1})  (T × 256) ────────────────────────┴─ concat ─ dense ─ 2 logits

``deco_gap_17`` feeds the unattended ``X'`` to blocks 4-5 and first reduces the concatenated
``GAP(X̃'_t)`` with a dense layer. The Table 3 baselines reuse the same blocks with other tops:
``"fc"`` = torchvision's VGG classifier (adaptive average pool to 7×7, 4096 → 4096 → 2 with ReLU and
dropout 0.5) and ``"gap"`` without the gaze pools = GAP → one dense layer.

Decisions where docs/design.md §4 and the paper are silent:

* Blocks 4-5 take the same ``width`` and ``batch_norm`` mode as the encoder and load the same
  torchvision state dict (``features[24:44]``); the ``"fc"`` top also loads torchvision's first two
  classifier layers (``classifier.0`` and ``classifier.3``) when they fit (at 224 px-independent
  shapes, width 1); the last layer (→ 2 classes) is new.
* The adaptive pool of the ``"fc"`` top makes it work at any image size (at 32 px the 1×1 map is
  replicated to 7×7, exactly as torchvision does).
* ``deco_gap_17``'s reduction: ``T·C → C`` (256 at width 1, the size of one gaze pool) + ReLU.
* New dense layers: weights N(0, 0.01), zero bias (torchvision's VGG and the authors' code).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .encoder import BLOCKS_4_5_CFG, BLOCKS_4_5_START, VGGBlocks, scaled

NUM_CLASSES = 2
DIAGNOSIS_SOURCES = ("attended", "encoder")
TOPS = ("gap", "fc")


def _dense(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, 0.0, 0.01)
    nn.init.zeros_(layer.bias)
    return layer


class GapHead(nn.Module):
    """GAP of the blocks 4-5 output, optionally concatenated with the gaze pools, then one dense layer.

    Args:
        features: channels of the blocks 4-5 output (512 at width 1).
        gaze_channels: ``C`` of each ``GAP(X̃'_t)``; ``0`` = no gaze pools (``vgg_gap``).
        steps: ``T``.
        reduce: first map the ``T·C`` gaze pools to ``C`` with dense + ReLU (``deco_gap_17``).

    Shape:
        ``forward(f, pooled)``: ``(B, features, h, w)`` and ``(B, T, C)`` (or ``None``) → ``(B, 2)``.
    """

    def __init__(self, features: int, *, gaze_channels: int = 0, steps: int = 1, reduce: bool = False):
        super().__init__()
        self.gaze_channels = gaze_channels
        gaze_dim = gaze_channels * steps
        self.reduce: nn.Module | None = None
        if gaze_channels and reduce:
            self.reduce = nn.Sequential(_dense(gaze_dim, gaze_channels), nn.ReLU(inplace=True))
            gaze_dim = gaze_channels
        self.fc = _dense(features + gaze_dim, NUM_CLASSES)

    def forward(self, f: Tensor, pooled: Tensor | None) -> Tensor:
        g = f.mean(dim=(2, 3))  # GAP (B, 512)
        if self.gaze_channels:
            if pooled is None:
                raise ValueError("this diagnosis head needs the gaze pools GAP(X̃'_t)")
            gaze = pooled.flatten(1)  # (B, T, C) -> (B, T*C), step-major
            if self.reduce is not None:
                gaze = self.reduce(gaze)  # (B, C)
            g = torch.cat([g, gaze], dim=1)
        return self.fc(g)


class FCHead(nn.Module):
    """torchvision's VGG top: adaptive average pool to 7×7, flatten, 4096 → 4096 → 2 (ReLU, dropout 0.5).

    Shape:
        ``forward(f, pooled)``: ``(B, features, h, w)`` → ``(B, 2)`` (``pooled`` is ignored).
    """

    def __init__(self, features: int, *, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        hidden = scaled(4096, width)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            _dense(features * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            _dense(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            _dense(hidden, NUM_CLASSES),
        )

    def forward(self, f: Tensor, pooled: Tensor | None = None) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(f), 1))  # (B, c, 7, 7) -> (B, 49c)

    def load_torchvision(self, state_dict: Mapping[str, Tensor]) -> bool:
        """Load torchvision's ``classifier.0`` and ``classifier.3``.

        Returns:
            Whether they were loaded (False, nothing changed, if absent or of other shapes).
        """
        own = self.classifier.state_dict()
        new = {k: state_dict[f"classifier.{k}"] for k in ("0.weight", "0.bias", "3.weight", "3.bias")
               if f"classifier.{k}" in state_dict}
        if len(new) != 4 or any(own[k].shape != v.shape for k, v in new.items()):
            return False
        self.classifier.load_state_dict(new, strict=False)
        return True


class DiagnosisBranch(nn.Module):
    """VGG-16-BN blocks 4-5 and a diagnosis top (Fig. 4).

    Args:
        in_channels: ``C`` (channels of ``X'``, 256 at width 1).
        steps: ``T``.
        width: channel multiplier.
        batch_norm: ``"on"``, ``"off"`` or ``"frozen"`` for blocks 4-5.
        source: ``"attended"`` (``X̃'_{T-1}``) or ``"encoder"`` (``X'``) into blocks 4-5.
        top: ``"gap"`` (:class:`GapHead`) or ``"fc"`` (:class:`FCHead`).
        gaze_pools: concatenate ``GAP(X̃'_t)`` for every ``t`` (``"gap"`` top only).
        reduce: reduce the gaze pools with a dense layer first (``deco_gap_17``).

    Shape:
        ``forward(x_prime, attended, pooled)``: ``X'`` ``(B, C, h, w)``, ``X̃'_{T-1}`` ``(B, C, h, w)``
        or ``None``, gaze pools ``(B, T, C)`` or ``None`` → logits ``(B, 2)``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        steps: int,
        width: float = 1.0,
        batch_norm: str = "on",
        source: str = "attended",
        top: str = "gap",
        gaze_pools: bool = True,
        reduce: bool = False,
    ):
        super().__init__()
        if source not in DIAGNOSIS_SOURCES or top not in TOPS:
            raise ValueError(f"source must be one of {DIAGNOSIS_SOURCES} and top one of {TOPS}")
        if top == "fc" and gaze_pools:
            raise ValueError("the 'fc' top takes no gaze pools")
        self.source = source
        self.blocks = VGGBlocks(BLOCKS_4_5_CFG, in_channels, width=width, batch_norm=batch_norm)
        self.head: GapHead | FCHead
        if top == "fc":
            self.head = FCHead(self.blocks.out_channels, width=width)
        else:
            self.head = GapHead(
                self.blocks.out_channels, gaze_channels=in_channels if gaze_pools else 0, steps=steps, reduce=reduce
            )

    @property
    def uses_gaze_pools(self) -> bool:
        """The top concatenates the gaze pools ``GAP(X̃'_t)``."""
        return isinstance(self.head, GapHead) and self.head.gaze_channels > 0

    def load_torchvision(self, state_dict: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Load blocks 4-5 (``features[24:44]``) and, for the ``"fc"`` top, ``classifier.0/3``."""
        self.blocks.load_torchvision(state_dict, BLOCKS_4_5_START, source)
        if isinstance(self.head, FCHead):
            self.head.load_torchvision(state_dict)

    def forward(self, x_prime: Tensor, attended: Tensor | None = None, pooled: Tensor | None = None) -> Tensor:
        x = x_prime if self.source == "encoder" else attended
        if x is None:
            raise ValueError("this diagnosis branch reads X̃'_{T-1}, which was not given")
        return self.head(self.blocks(x), pooled)  # blocks 4-5: (B, C, h, w) -> (B, 512, h/4, w/4)
