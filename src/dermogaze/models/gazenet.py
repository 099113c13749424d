"""The whole gaze network (Fig. 1) and the registry of the Table 3 variants.

``build_model("deco_gap_3")`` returns a :class:`GazeNet`: encoder (VGG-16-BN blocks 1-3) →
attentive ConvLSTM (``T`` gazes) → structure decoder (masks ``M_t`` and classes ``pred_t``) and
diagnosis branch (melanoma logits). Variants are registered constructors (timm's
``@register_model``), one per row of Table 3 (docs/design.md §4)::

    variant              attention  decoder  diagnosis input  top                 defaults
    vgg                  no         no       X'               FC (4096, 4096)     BN on
    vgg_gap              no         no       X'               GAP + dense         BN on
    vgg_attconvlstm      yes        no       X̃'_{T-1}         FC (4096, 4096)     BN on
    vgg_attconvlstm_gap  yes        no       X̃'_{T-1}         GAP ⊕ gazes         BN on
    deco_gap_3           yes        yes      X̃'_{T-1}         GAP ⊕ gazes         skip, BN frozen
    deco_gap_5           yes        yes      X̃'_{T-1}         GAP ⊕ gazes         no skip, BN on
    deco_gap_17          yes        yes      X'               GAP ⊕ dense(gazes)  no skip, BN on

"gazes" = ``GAP(X̃'_t)`` for every ``t``. Decisions where the paper is silent:

* ``vgg_attconvlstm`` (no "GAP strategy"): blocks 4-5 on ``X̃'_{T-1}`` and the FC top, without the
  gaze pools, which belong to the GAP strategy (§3.1.3).
* ``batch_norm`` applies to every VGG part (encoder and blocks 4-5) and to the decoder: ``"off"``
  removes BN everywhere; ``"frozen"`` fixes the VGG parts' BN (eval mode, no gradient to their
  affine parameters) while the decoder's BN, which has no pretrained statistics, stays trainable.
* ``skip`` is meaningless without a decoder: setting it for such a variant is an error; ``steps``
  is recorded but unused by ``vgg`` and ``vgg_gap``.
* ``image_size`` must be a multiple of 32 (five VGG pools); the forward pass accepts any input whose
  sides are multiples of 32 (the value is recorded for the pipeline).
* ``init_kwargs`` records ``weights=None``: a checkpoint's state dict supersedes the initial weights,
  so rebuilding from it must not need the ImageNet file.
* Encoder freezing (the paper's encoder learning rate of 0) is not a build option: the training
  code calls :meth:`GazeNet.freeze_encoder`, which also stops the encoder's backward pass.
* On the CPU the forward pass runs in channels-last layout whatever the input's layout (oneDNN's
  own layout: its convolutions then make no reorder copies; same results up to float rounding).

Gaze ablation (docs/design.md §6b, beyond the paper). :meth:`GazeNet.forward_with_state` also returns a
:class:`GazeState` (``X'``, ``X̃'_{T-1}``, the gaze pools), from which :meth:`GazeNet.diagnose`
reruns the diagnosis branch alone with some gazes removed. *Removing gaze t* changes only the
diagnosis input, not the recurrence (the later gazes stay as they were):

* its pool ``GAP(X̃'_t)`` is zeroed in the concatenation (for the GAP top that removes exactly its
  term ``w_t · GAP(X̃'_t)`` from the logits; for ``deco_gap_17`` the zero enters the reduction layer);
* if ``t = T-1`` and blocks 4-5 read ``X̃'_{T-1}`` (``source = "attended"``), they read instead the
  map of a uniform attention, ``(h·w)·(1/(h·w)) ⊙ X' = X'`` (the rescaled Eq. 3; ``X'/(h·w)`` with the
  literal one): zeroing a feature map would feed blocks 4-5 an input they never saw, while a uniform
  attention is "no gaze" within the model's own inputs.

Which variants the measure can see: ``vgg`` and ``vgg_gap`` have no gazes (``diagnose`` ignores
``keep``: zero effect by construction); ``vgg_attconvlstm`` uses only the last gaze (its FC top has
no gaze pools), so removing an earlier one has zero effect; ``deco_gap_17`` feeds the unattended
``X'`` to blocks 4-5, so only its gaze pools (through the dense reduction) carry the gazes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config import BATCH_NORM_MODES
from ..errors import DermogazeError
from ..structures import NUM_STRUCTURES
from .attention import AttentiveConvLSTM
from .decoder import StructureDecoder
from .diagnosis import DiagnosisBranch
from .encoder import VGGEncoder, load_vgg16_bn_weights
from .output import GazeOutput

logger = logging.getLogger(__name__)

#: Names ``build_model`` accepts as overrides: the fields of ``dermogaze.config.ModelConfig`` but ``name``, and
#: ``num_structures``, which comes from the training data (its structure set), not from the config.
BUILD_OPTIONS = ("steps", "image_size", "width", "skip", "batch_norm", "weights", "num_structures")
#: Spatial reduction of the whole VGG-16 (five pools): image sides must be multiples of it.
IMAGE_MULTIPLE = 32


@dataclass
class GazeState:
    """What the diagnosis branch reads, kept so that :meth:`GazeNet.diagnose` can rerun it alone.

    Attributes:
        x_prime: the encoder output ``X'`` ``(B, C, h, w)``.
        last_attended: ``X̃'_{T-1}`` ``(B, C, h, w)``; ``None`` without an attentive ConvLSTM.
        pooled: the gaze pools ``GAP(X̃'_t)`` ``(B, T, C)``; ``None`` without an attentive ConvLSTM.
    """

    x_prime: Tensor
    last_attended: Tensor | None = None
    pooled: Tensor | None = None


@dataclass(frozen=True)
class VariantSpec:
    """How a registered variant wires the parts (see the module docstring's table)."""

    attention: bool
    decoder: bool
    source: str  # diagnosis input: "attended" (X̃'_{T-1}) or "encoder" (X')
    top: str  # "gap" or "fc"
    gaze_pools: bool
    reduce: bool = False
    skip: bool | None = None  # default for decoder variants
    batch_norm: str = "on"


class GazeNet(nn.Module):
    """Encoder → attentive ConvLSTM → structure decoder and diagnosis branch (Fig. 1).

    Build it with :func:`build_model`. Parts a variant lacks are ``None``.

    Attributes:
        variant: registered name, e.g. ``"deco_gap_3"``.
        init_kwargs: resolved build arguments: ``build_model(**model.init_kwargs)`` rebuilds it.
        steps: ``T``; image_size: the input size it was built for.
        needs_masks: the variant has a structure decoder (its loss needs ground-truth masks).
        batch_norm: the resolved batch-norm mode, ``"on"``, ``"off"`` or ``"frozen"`` (read-only).
        encoder_frozen: whether :meth:`freeze_encoder` froze the encoder (read-only).

    Shape:
        ``forward(images)``: ``(B, 3, H, W)`` (sides multiples of 32) → :class:`GazeOutput` with
        ``logits (B, 2)``, ``attention (B, T, H/8, W/8)``, ``masks``/``mask_logits (B, T, H, W)``,
        ``structure_logits (B, T, 6)``.
    """

    def __init__(
        self,
        *,
        variant: str,
        encoder: VGGEncoder,
        diagnosis: DiagnosisBranch,
        attention: AttentiveConvLSTM | None = None,
        decoder: StructureDecoder | None = None,
        steps: int = 1,
        image_size: int = 224,
        init_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.variant = variant
        self.encoder = encoder
        self.attention = attention
        self.decoder = decoder
        self.diagnosis = diagnosis
        self.steps = steps
        self.image_size = image_size
        self.init_kwargs: dict[str, Any] = dict(init_kwargs or {})

    @property
    def needs_masks(self) -> bool:
        """The variant has a structure decoder (its loss needs ground-truth masks)."""
        return self.decoder is not None

    @property
    def batch_norm(self) -> str:
        """The resolved batch-norm mode: ``"on"``, ``"off"`` or ``"frozen"`` (the module docstring says which parts)."""
        return self.encoder.batch_norm

    @property
    def encoder_frozen(self) -> bool:
        """Whether the encoder is frozen (:meth:`freeze_encoder`)."""
        return self.encoder.frozen

    def forward(self, images: Tensor) -> GazeOutput:
        return self.forward_with_state(images)[0]

    def forward_with_state(self, images: Tensor, *, decode: bool = True) -> tuple[GazeOutput, GazeState]:
        """The forward pass, plus the :class:`GazeState` that :meth:`diagnose` recomputes the diagnosis from.

        Args:
            images: normalised ``(B, 3, H, W)``.
            decode: run the structure decoder; without it the output holds the diagnosis and the
                attention maps only (the masks and structure logits are ``None``): what the
                perturbation measures need, at a fraction of the cost.

        Shape:
            ``images`` ``(B, 3, H, W)`` → (:class:`GazeOutput`, :class:`GazeState`) (see the class docstring).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2] % IMAGE_MULTIPLE or images.shape[-1] % IMAGE_MULTIPLE:
            raise ValueError(f"image sides must be multiples of {IMAGE_MULTIPLE}, got {tuple(images.shape[-2:])}")
        if images.device.type == "cpu":  # oneDNN's native layout: no reorder copies in its convolutions
            images = images.contiguous(memory_format=torch.channels_last)
        x_prime, skips = self.encoder(images)  # X' (B, C, H/8, W/8); pool1, pool2, pool3
        if self.attention is None:
            return GazeOutput(logits=self.diagnosis(x_prime)), GazeState(x_prime=x_prime)
        decode = decode and self.decoder is not None
        att = self.attention(x_prime, return_hidden=decode)
        state = GazeState(x_prime=x_prime, last_attended=att.last_attended, pooled=att.pooled)
        logits = self.diagnosis(x_prime, att.last_attended, att.pooled)
        if not decode:
            return GazeOutput(logits=logits, attention=att.attention), state
        mask_logits, structure_logits = self.decoder(att.hidden, skips)
        out = GazeOutput(
            logits=logits,
            attention=att.attention,
            masks=torch.sigmoid(mask_logits),
            mask_logits=mask_logits,
            structure_logits=structure_logits,
        )
        return out, state

    def diagnose(self, state: GazeState, keep: Tensor | None = None, *, temperature: float = 1.0) -> Tensor:
        """P(melanoma) recomputed from a :class:`GazeState`, using only the gazes in ``keep`` (gaze ablation).

        Removing gaze ``t`` (the module docstring defines it): its pool ``GAP(X̃'_t)`` is zeroed in the
        diagnosis input, and when ``t = T-1`` and blocks 4-5 read ``X̃'_{T-1}``, they read the map a
        uniform attention gives instead (``X'`` with the rescaled Eq. 3). For variants whose diagnosis
        reads no gaze (no attentive ConvLSTM), ``keep`` changes nothing: the effect is zero by construction.

        Args:
            state: from :meth:`forward_with_state` of this model.
            keep: bool ``(T,)`` or ``(B, T)``, the gazes the diagnosis may use; ``None`` = all
                (then the result equals the forward's ``melanoma_prob``).
            temperature: temperature scaling of the probability (1 = the network's own).

        Returns:
            ``(B,)`` P(melanoma).
        """
        if state.pooled is None or state.last_attended is None or keep is None:
            logits = self.diagnosis(state.x_prime, state.last_attended, state.pooled)
            return GazeOutput(logits=logits).calibrated_melanoma_prob(temperature)
        b, steps = state.pooled.shape[:2]
        keep = keep.to(device=state.pooled.device, dtype=torch.bool)
        if keep.shape not in ((steps,), (b, steps)):
            raise ValueError(f"keep must have shape ({steps},) or ({b}, {steps}), got {tuple(keep.shape)}")
        keep = keep.expand(b, steps)  # (B, T)
        pooled = state.pooled * keep.unsqueeze(-1).to(state.pooled.dtype)  # (B, T, C): removed pools zeroed
        h, w = state.x_prime.shape[-2:]
        x_tilde = state.x_prime if self.attention.rescale else state.x_prime / (h * w)  # uniform A: X̃' (B, C, h, w)
        last = torch.where(keep[:, -1].view(b, 1, 1, 1), state.last_attended, x_tilde)
        logits = self.diagnosis(state.x_prime, last, pooled)
        return GazeOutput(logits=logits).calibrated_melanoma_prob(temperature)

    def freeze_encoder(self, frozen: bool = True) -> GazeNet:
        """Freeze the encoder (no gradient, BN in eval mode, forward under ``no_grad``), or unfreeze it."""
        self.encoder.freeze(frozen)
        return self

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split for the paper's per-module learning rates.

        Returns:
            ``{"encoder": [...], "attention": [...], "branches": [...]}``: the encoder (blocks 1-3),
            the attentive ConvLSTM, and everything else (structure decoder and classifier,
            diagnosis blocks 4-5 and top). Every parameter with ``requires_grad`` is in exactly one
            group; a group may be empty (a frozen encoder, a variant without attention).
        """
        groups: dict[str, list[nn.Parameter]] = {"encoder": [], "attention": [], "branches": []}
        for name, p in self.named_parameters():
            if p.requires_grad:
                part = name.split(".", 1)[0]
                groups[part if part in ("encoder", "attention") else "branches"].append(p)
        return groups

    def module_parameter_counts(self) -> dict[str, tuple[int, int]]:
        """``{part: (parameters, trainable)}`` for each part of the network, in data-flow order."""
        parts: dict[str, nn.Module | None] = {
            "encoder (VGG blocks 1-3)": self.encoder,
            "attentive ConvLSTM": self.attention,
            "structure decoder": self.decoder.blocks if self.decoder is not None else None,
            "structure classifier": self.decoder.classifier if self.decoder is not None else None,
            "diagnosis VGG blocks 4-5": self.diagnosis.blocks,
            "diagnosis top": self.diagnosis.head,
        }
        return {
            name: (sum(p.numel() for p in m.parameters()), sum(p.numel() for p in m.parameters() if p.requires_grad))
            for name, m in parts.items()
            if m is not None
        }

    def summary(self) -> str:
        """A table of the parameter counts per part (``dermogaze model summary``) and the optimiser groups."""
        kw = self.init_kwargs
        skip = "n/a" if kw["skip"] is None else ("on" if kw["skip"] else "off")
        frozen = " (encoder frozen)" if self.encoder_frozen else ""
        lines = [
            f"{self.variant}: image {kw['image_size']} px, T={kw['steps']}, width {kw['width']:g}, "
            f"skip {skip}, batch norm {self.batch_norm}{frozen}",
            f"{'module':<28}{'parameters':>14}{'trainable':>14}",
        ]
        counts = self.module_parameter_counts()
        lines += [f"{name:<28}{total:>14,}{trainable:>14,}" for name, (total, trainable) in counts.items()]
        total = sum(t for t, _ in counts.values())
        trainable = sum(t for _, t in counts.values())
        lines.append(f"{'total':<28}{total:>14,}{trainable:>14,}")
        groups = self.parameter_groups()
        lines.append("optimiser groups: " + ", ".join(f"{k} {sum(p.numel() for p in v):,}" for k, v in groups.items()))
        return "\n".join(lines)


_REGISTRY: dict[str, Callable[..., GazeNet]] = {}


def register_model(fn: Callable[..., GazeNet]) -> Callable[..., GazeNet]:
    """Register a variant constructor under its function name (timm's ``@register_model``).

    A configuration names its variant in ``model.name``, which :func:`dermogaze.config.validate`
    checks against :data:`dermogaze.config.MODEL_NAMES`: a new variant is added there too.
    """
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Registered variant names, in Table 3 order."""
    return list(_REGISTRY)


def build_model(name: str, **overrides: Any) -> GazeNet:
    """Build a registered variant.

    Args:
        name: one of :func:`list_models` (Table 3).
        **overrides: ``steps`` (T), ``image_size`` (multiple of 32), ``width`` (channel multiplier),
            ``skip`` (decoder skip averaging), ``batch_norm`` (``"on"``/``"off"``/``"frozen"``),
            ``weights`` (``None``, ``"imagenet"`` or a path to a ``vgg16_bn`` state dict),
            ``num_structures`` (classes of the structure classifier: the size of the training data's
            structure set, 6 for ISIC 2017 by default). ``None`` means the variant's own default.

    Raises:
        DermogazeError: unknown variant or option, invalid value, weights that cannot be loaded.
    """
    if name not in _REGISTRY:
        raise DermogazeError(f"unknown model {name!r}: available models are {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(BUILD_OPTIONS))
    if unknown:
        raise DermogazeError(f"unknown model option(s) {', '.join(unknown)} (known: {', '.join(BUILD_OPTIONS)})")
    return _REGISTRY[name](**{k: v for k, v in overrides.items() if v is not None})


def _create(
    name: str,
    spec: VariantSpec,
    *,
    steps: int = 5,
    image_size: int = 224,
    width: float = 1.0,
    skip: bool | None = None,
    batch_norm: str | None = None,
    weights: str | None = None,
    num_structures: int = NUM_STRUCTURES,
) -> GazeNet:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DermogazeError(f"model {name}: steps (T) must be a positive integer, got {steps!r}")
    if (
        isinstance(image_size, bool) or not isinstance(image_size, int)
        or image_size < IMAGE_MULTIPLE or image_size % IMAGE_MULTIPLE
    ):
        raise DermogazeError(
            f"model {name}: image_size must be a positive multiple of {IMAGE_MULTIPLE} "
            f"(five VGG pools), got {image_size!r}"
        )
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise DermogazeError(f"model {name}: width must be a positive number, got {width!r}")
    width = float(width)
    if isinstance(num_structures, bool) or not isinstance(num_structures, int) or num_structures < 2:
        raise DermogazeError(f"model {name}: num_structures must be an integer of at least 2, got {num_structures!r}")
    batch_norm = spec.batch_norm if batch_norm is None else batch_norm
    if batch_norm not in BATCH_NORM_MODES:
        raise DermogazeError(
            f"model {name}: batch_norm must be one of {', '.join(BATCH_NORM_MODES)}, got {batch_norm!r}"
        )
    if spec.decoder:
        skip = spec.skip if skip is None else skip
        if not isinstance(skip, bool):
            raise DermogazeError(f"model {name}: skip must be true or false, got {skip!r}")
    elif skip is not None:
        raise DermogazeError(f"model {name} has no structure decoder: the skip option does not apply")
    state = load_vgg16_bn_weights(weights)
    if state is not None and width != 1.0:
        raise DermogazeError(f"model {name}: pretrained VGG weights only fit width 1 (got width {width:g})")

    encoder = VGGEncoder(width=width, batch_norm=batch_norm)
    c = encoder.out_channels
    attention = AttentiveConvLSTM(c, steps) if spec.attention else None
    decoder = (
        StructureDecoder(
            c, encoder.skip_channels, skip=bool(skip), batch_norm=batch_norm != "off", num_structures=num_structures
        )
        if spec.decoder
        else None
    )
    diagnosis = DiagnosisBranch(
        c, steps=steps, width=width, batch_norm=batch_norm, source=spec.source, top=spec.top,
        gaze_pools=spec.gaze_pools, reduce=spec.reduce,
    )
    if state is not None:
        src = f"weights {weights}"
        encoder.load_torchvision(state, 0, src)
        diagnosis.load_torchvision(state, src)
        logger.info("loaded VGG-16-BN weights (%s) into the encoder and blocks 4-5", weights)
    init_kwargs = dict(
        name=name, steps=steps, image_size=image_size, width=width, skip=skip, batch_norm=batch_norm, weights=None,
        num_structures=num_structures,
    )
    return GazeNet(
        variant=name, encoder=encoder, attention=attention, decoder=decoder, diagnosis=diagnosis, steps=steps,
        image_size=image_size, init_kwargs=init_kwargs,
    )


# Table 3, in the paper's order.
@register_model
def vgg(**kwargs: Any) -> GazeNet:
    """VGG-16-BN, FC top adapted to 2 classes."""
    spec = VariantSpec(attention=False, decoder=False, source="encoder", top="fc", gaze_pools=False)
    return _create("vgg", spec, **kwargs)


@register_model
def vgg_gap(**kwargs: Any) -> GazeNet:
    """VGG-16-BN convolutions, GAP over pool5, one dense layer."""
    spec = VariantSpec(attention=False, decoder=False, source="encoder", top="gap", gaze_pools=False)
    return _create("vgg_gap", spec, **kwargs)


@register_model
def vgg_attconvlstm(**kwargs: Any) -> GazeNet:
    """VGG-16-BN with the attentive ConvLSTM after block 3; FC top on blocks 4-5 of X̃'_{T-1}."""
    spec = VariantSpec(attention=True, decoder=False, source="attended", top="fc", gaze_pools=False)
    return _create("vgg_attconvlstm", spec, **kwargs)


@register_model
def vgg_attconvlstm_gap(**kwargs: Any) -> GazeNet:
    """VGG-16-BN with the attentive ConvLSTM; GAP of blocks 4-5 on X̃'_{T-1} concatenated with every GAP(X̃'_t)."""
    spec = VariantSpec(attention=True, decoder=False, source="attended", top="gap", gaze_pools=True)
    return _create("vgg_attconvlstm_gap", spec, **kwargs)


@register_model
def deco_gap_3(**kwargs: Any) -> GazeNet:
    """The full network: structure decoder with skip averaging, frozen VGG batch norm (Deco_GAP_3)."""
    spec = VariantSpec(
        attention=True, decoder=True, source="attended", top="gap", gaze_pools=True, skip=True, batch_norm="frozen"
    )
    return _create("deco_gap_3", spec, **kwargs)


@register_model
def deco_gap_5(**kwargs: Any) -> GazeNet:
    """The full network without skip connections, trainable batch norm (Deco_GAP_5)."""
    spec = VariantSpec(
        attention=True, decoder=True, source="attended", top="gap", gaze_pools=True, skip=False, batch_norm="on"
    )
    return _create("deco_gap_5", spec, **kwargs)


@register_model
def deco_gap_17(**kwargs: Any) -> GazeNet:
    """No skip, trainable BN, blocks 4-5 on the unattended X' and a dense reduction of the gaze pools (Deco_GAP_17)."""
    spec = VariantSpec(
        attention=True, decoder=True, source="encoder", top="gap", gaze_pools=True, reduce=True, skip=False,
        batch_norm="on",
    )
    return _create("deco_gap_17", spec, **kwargs)
