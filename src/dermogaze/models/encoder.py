"""VGG-16-BN blocks: the encoder (blocks 1-3, paper §3.1.1) and the layers they share with the diagnosis branch.

Every VGG part of the network is a :class:`VGGBlocks`, an ``nn.Sequential`` laid out exactly like a
slice of torchvision's ``vgg16_bn().features`` (same layer types at the same indices), so a
torchvision state dict loads into it key for key:

* :class:`VGGEncoder` = ``features[:24]`` (blocks 1-3 with their max-pools), output ``X'``;
* blocks 4-5 of the diagnosis branch = ``features[24:44]`` (see :mod:`dermogaze.models.diagnosis`).

Decisions (docs/design.md §4 and the paper are silent on these):

* ``width`` scales every channel count (``round(c * width)``, at least 1); the layer structure is
  unchanged, so the network stays the paper's at ``width=1``, and a torchvision state dict loads
  only there.
* ``batch_norm="off"`` puts ``nn.Identity`` where torchvision has ``BatchNorm2d``: the indices stay
  torchvision's, so ImageNet *convolution* weights still load into a BN-free network (the BN
  statistics are then dropped).
* ``batch_norm="frozen"`` (the paper's "frozen batch normalization"): BN layers always run in eval
  mode (their running statistics never move, even after ``model.train()``) and their affine
  parameters get no gradient. Without pretrained weights they sit at their initial values (mean 0,
  variance 1, weight 1, bias 0), i.e. almost the identity: a warning is logged.
* A *frozen* part (``freeze()``; the paper's encoder learning rate of 0): no parameter requires a
  gradient, every BN is in eval mode, and :class:`VGGEncoder` runs under ``torch.no_grad()`` so no
  activation is stored for a backward pass that would never use it (unless the input itself
  requires a gradient, e.g. for input-gradient explanations).
* Under the CPU's bf16 autocast, blocks 1-2 run in float32 (:data:`CPU_FLOAT32_BLOCKS`): the image
  rounded to bf16 and the first blocks' rounding are what moved a checkpoint's P(melanoma) beyond
  0.01 (docs/speed.md); block 3 and everything after take autocast's bf16. CUDA autocast is untouched.
* Initialisation without weights follows torchvision's VGG: Kaiming-normal (fan-out, ReLU) for
  convolutions, zero biases, BN weight 1 / bias 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import BATCH_NORM_MODES
from ..errors import DermogazeError
from ..files import check_file_kind

logger = logging.getLogger(__name__)

#: VGG-16 configuration "D" (torchvision): channels of each 3×3 conv, "M" = 2×2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
)
#: Blocks 1-3 (the encoder, torchvision ``features[:24]``) and blocks 4-5 (``features[24:44]``).
ENCODER_CFG: tuple[int | str, ...] = VGG16_CFG[:10]
BLOCKS_4_5_CFG: tuple[int | str, ...] = VGG16_CFG[10:]
#: Index of blocks 4-5's first layer inside torchvision's ``vgg16_bn().features``.
BLOCKS_4_5_START = 24
FEATURES_LENGTH = 44

#: Blocks of the encoder that stay float32 under the CPU's bf16 autocast: rounding the image and the first
#: two blocks to bf16 is what moves P(melanoma) most (docs/speed.md), and their few channels gain little from it.
CPU_FLOAT32_BLOCKS = 2

#: torchvision's ImageNet weights for vgg16_bn (``VGG16_BN_Weights.IMAGENET1K_V1``).
IMAGENET_URL = "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"


def scaled(channels: int, width: float) -> int:
    """Channel count ``channels`` scaled by the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def _make_layers(cfg: Sequence[int | str], in_channels: int, width: float, batch_norm: str) -> list[nn.Module]:
    """torchvision's ``vgg.make_layers`` with a width multiplier and ``Identity`` for an absent BN."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        c_out = scaled(int(v), width)
        layers += [
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
            nn.BatchNorm2d(c_out) if batch_norm != "off" else nn.Identity(),
            nn.ReLU(inplace=True),
        ]
        c_in = c_out
    return layers


class VGGBlocks(nn.Sequential):
    """A slice of VGG-16-BN's ``features`` with torchvision's layer indices.

    Args:
        cfg: slice of :data:`VGG16_CFG` (channels at ``width=1``, ``"M"`` for a max-pool).
        in_channels: channels of the input.
        width: channel multiplier.
        batch_norm: ``"on"``, ``"off"`` (Identity in place of BN) or ``"frozen"`` (eval mode, no grad).

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H / 2**pools, W / 2**pools)``.
    """

    def __init__(self, cfg: Sequence[int | str], in_channels: int, *, width: float = 1.0, batch_norm: str = "on"):
        if batch_norm not in BATCH_NORM_MODES:
            raise DermogazeError(f"batch_norm must be one of {', '.join(BATCH_NORM_MODES)}, got {batch_norm!r}")
        super().__init__(*_make_layers(cfg, in_channels, width, batch_norm))
        self.batch_norm = batch_norm
        convs = [m for m in self if isinstance(m, nn.Conv2d)]
        self.out_channels: int = convs[-1].out_channels
        self.frozen = False
        self._init_weights()
        self._apply_freezing()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def batch_norms(self) -> list[nn.BatchNorm2d]:
        return [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]

    def _apply_freezing(self) -> None:
        bn_params = {id(p) for bn in self.batch_norms() for p in bn.parameters()}
        for p in self.parameters():
            fixed = self.frozen or (self.batch_norm == "frozen" and id(p) in bn_params)
            p.requires_grad_(not fixed)
        self.train(self.training)

    def freeze(self, frozen: bool = True) -> VGGBlocks:
        """Freeze (no gradient, BN in eval mode, no stored activations) or unfreeze these blocks."""
        self.frozen = bool(frozen)
        self._apply_freezing()
        return self

    def train(self, mode: bool = True) -> VGGBlocks:
        """Like ``nn.Module.train``, but frozen BN layers (or all BN of frozen blocks) stay in eval mode."""
        super().train(mode)
        if mode and (self.frozen or self.batch_norm == "frozen"):
            for bn in self.batch_norms():
                bn.train(False)
        return self

    def load_torchvision(self, state_dict: Mapping[str, Tensor], start: int, source: str = "state dict") -> None:
        """Load ``features.{start + i}.*`` of a torchvision ``vgg16_bn`` state dict into layer ``i``.

        BN entries are skipped where this slice has no BN (``batch_norm="off"``).

        Raises:
            DermogazeError: missing keys or shapes that do not fit (e.g. ``width != 1``).
        """
        own: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            prefix, _, rest = key.partition(".")
            index, _, name = rest.partition(".")
            if prefix != "features" or not index.isdigit():
                continue
            i = int(index) - start
            if 0 <= i < len(self) and not isinstance(self[i], nn.Identity):
                own[f"{i}.{name}"] = value
        try:
            self.load_state_dict(own, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise DermogazeError(
                f"{source}: does not fit VGG-16-BN features[{start}:{start + len(self)}] "
                f"(width must be 1; {first[1].strip() if len(first) > 1 else first[0]})"
            ) from None


class VGGEncoder(VGGBlocks):
    """The encoder: VGG-16-BN blocks 1-3 (torchvision ``features[:24]``), paper §3.1.1.

    Args:
        width: channel multiplier (1.0 = 64/128/256 channels, the paper).
        batch_norm: ``"on"``, ``"off"`` or ``"frozen"`` (see the module docstring).

    Attributes:
        out_channels: channels ``C`` of ``X'`` (256 at width 1).
        skip_channels: channels of the pooled outputs of blocks 1, 2, 3 (64, 128, 256 at width 1).

    Shape:
        ``forward(x)``: ``(B, 3, H, W) -> (X', skips)`` with ``X'`` ``(B, C, H/8, W/8)`` and
        ``skips = (pool1 (B, 64w, H/2, W/2), pool2 (B, 128w, H/4, W/4), pool3 = X')``.
    """

    def __init__(self, *, width: float = 1.0, batch_norm: str = "on"):
        super().__init__(ENCODER_CFG, 3, width=width, batch_norm=batch_norm)
        skip_channels, channels = [], 3
        for layer in self:
            if isinstance(layer, nn.Conv2d):
                channels = layer.out_channels
            elif isinstance(layer, nn.MaxPool2d):
                skip_channels.append(channels)
        self.skip_channels: tuple[int, ...] = tuple(skip_channels)

    def _features(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        skips: list[Tensor] = []
        exact = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        for layer in self:
            if exact and len(skips) < CPU_FLOAT32_BLOCKS:
                with torch.autocast("cpu", enabled=False):
                    x = layer(x.float())
            else:
                x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                skips.append(x)
        return x, tuple(skips)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:  # type: ignore[override]
        """Return ``X'`` and the pooled outputs of blocks 1-3 (the last one is ``X'`` itself)."""
        if self.frozen and not x.requires_grad:
            with torch.no_grad():  # no backward through a frozen encoder: keep no activations
                return self._features(x)
        return self._features(x)


def imagenet_cache_path() -> Path:
    """Where torchvision's ImageNet ``vgg16_bn`` weights are looked for (the torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_URL.rsplit("/", 1)[-1]


def _download_imagenet(dst: Path) -> None:
    """Download torchvision's weights to ``dst`` (the hub cache); separated so tests can stub it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(IMAGENET_URL, str(dst), progress=True)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not check_file_kind(path, "weights file", "give a vgg16_bn state dict (.pth)").is_file():
        raise DermogazeError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, pickle of something else, ...
        raise DermogazeError(f"weights file {path} is not a readable PyTorch state dict ({exc})") from None
    if isinstance(state, Mapping) and "features.0.weight" not in state:
        for key in ("state_dict", "model"):  # a checkpoint holding a vgg16_bn state dict
            if isinstance(state.get(key), Mapping) and "features.0.weight" in state[key]:
                state = state[key]
                break
    if not isinstance(state, Mapping) or "features.0.weight" not in state:
        raise DermogazeError(
            f"weights file {path} is not a torchvision vgg16_bn state dict (no 'features.0.weight' entry)"
        )
    return dict(state)


def load_vgg16_bn_weights(weights: str | Path | None) -> dict[str, Tensor] | None:
    """Resolve the ``weights`` option into a torchvision ``vgg16_bn`` state dict.

    Args:
        weights: ``None`` (random initialisation), ``"imagenet"`` (torchvision's
            ``VGG16_BN_Weights.IMAGENET1K_V1`` from the torch hub cache, downloaded there if
            possible) or the path of a local file holding a full ``vgg16_bn`` state dict.

    Returns:
        The state dict (CPU tensors), or ``None`` for ``weights=None``.

    Raises:
        DermogazeError: ImageNet weights neither cached nor downloadable (the message gives the exact
            path where to put the file), a missing or unreadable file, or a file that is not a
            ``vgg16_bn`` state dict.
    """
    if weights is None:
        return None
    if str(weights).lower() == "imagenet":
        path = imagenet_cache_path()
        if not path.is_file():
            try:
                logger.info("downloading ImageNet vgg16_bn weights to %s", path)
                _download_imagenet(path)
            except Exception as exc:  # offline, proxy, disk full, ...
                raise DermogazeError(
                    f"ImageNet weights for vgg16_bn are not in the torch hub cache and could not be downloaded "
                    f"({type(exc).__name__}: {exc}); download {IMAGENET_URL} and put it at {path} "
                    f"(or pass weights=PATH to a local vgg16_bn state dict)"
                ) from None
        return _read_state_dict(path)
    return _read_state_dict(Path(weights))
