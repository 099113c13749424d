"""The straightforward formulation of the gaze network, the reference of ``benchmarks/bench_train.py``.

Same equations and same weights as :class:`dermogaze.models.GazeNet`, written the way one first
writes them from the paper, with none of dermogaze's speed-ups:

* **one convolution per gate and per attention term**: ``W_a, U_a, V_a`` (Eq. 1) and ``W_i, U_i,
  W_f, U_f, W_o, U_o, W_g, U_g`` (Eqs. 4-7) are ten separate ``C → C`` convolutions (plus
  ``V_a``), where dermogaze runs two fused ones (``[U_a; U_i; U_f; U_o; U_g]`` and
  ``[W_i; W_f; W_o; W_g]``);
* ``W_a * X'`` **recomputed at every step**, and the recurrent convolutions also run on
  ``H_0 = 0`` at ``t = 0`` (dermogaze computes ``W_a * X'`` once and skips the zero terms);
* **the decoder called once per step** on ``H_t`` (``T`` calls of batch ``B``; dermogaze makes one
  call of batch ``T·B``), the skip maps added step by step, and the pre-block GAP taken on the
  upsampled map, as Fig. 3 draws it (equal to dermogaze's GAP before the nearest upsampling);
* **the frozen encoder's backward still computed**: the encoder's weights require a gradient, as
  when the paper's encoder learning rate of 0 is given to the optimiser (``lr=0`` in its Adam
  group: the weights never move, but autograd stores the encoder's activations and computes its
  backward pass). dermogaze freezes the encoder instead (``requires_grad=False``, forward under
  ``no_grad``). Its batch norms run on their fixed statistics, like a frozen encoder's, so both
  formulations compute the same function;
* plain eager float32, contiguous (NCHW) tensors, torchvision's layers.

:meth:`Baseline.from_gazenet` copies a :class:`~dermogaze.models.GazeNet`'s weights (splitting the
fused gate convolutions into per-gate ones), so the two can be compared on the same weights and
batch; :meth:`Baseline.gazenet_tensors` maps the baseline's parameters (or their gradients) back to
the model's parameter names (concatenating the per-gate pieces in the fused order) for that
comparison.

This file lives under ``benchmarks/`` (it is a measuring stick, not part of the library).
``bench_train.py`` beside it (also run as ``dermogaze bench``) imports it as the sibling module
``baseline``; ``tests/experiments/test_bench.py`` loads it from this file under that name.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dermogaze.models import GazeNet, GazeOutput
from dermogaze.models.attention import GATE_ORDER, RECURRENT_ORDER
from dermogaze.models.diagnosis import FCHead, GapHead


def _copy_layers(layers: nn.Sequential) -> nn.Sequential:
    """A plain ``nn.Sequential`` holding copies of ``layers`` (same indices, weights and statistics)."""
    return nn.Sequential(*(copy.deepcopy(m) for m in layers))


class BaselineAttentiveConvLSTM(nn.Module):
    """Attentive model and ConvLSTM (Eqs. 1-9) with one convolution per term.

    Args:
        channels: ``C``.
        steps: ``T``.
        kernel_size: kernel of every convolution.
        rescale: ``X̃'_t = (h·w) A_t ⊙ X'`` (dermogaze's default) instead of the literal ``A_t ⊙ X'``.

    Attributes:
        w_a (bias ``b_a``), u_a, v_a: Eq. 1. ``w_i, w_f, w_o, w_g`` (biases ``b_*``) and
        ``u_i, u_f, u_o, u_g`` (no bias): Eqs. 4-7.
    """

    def __init__(self, channels: int, steps: int, *, kernel_size: int = 3, rescale: bool = True):
        super().__init__()
        c, pad = channels, kernel_size // 2
        self.channels, self.steps, self.rescale = c, steps, rescale
        self.w_a = nn.Conv2d(c, c, kernel_size, padding=pad, bias=True)
        self.u_a = nn.Conv2d(c, c, kernel_size, padding=pad, bias=False)
        self.v_a = nn.Conv2d(c, 1, kernel_size, padding=pad, bias=False)
        for g in GATE_ORDER:
            setattr(self, f"w_{g}", nn.Conv2d(c, c, kernel_size, padding=pad, bias=True))
            setattr(self, f"u_{g}", nn.Conv2d(c, c, kernel_size, padding=pad, bias=False))

    def forward(self, x_prime: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Run ``T`` steps.

        Shape:
            ``X'`` ``(B, C, h, w)`` → attention ``(B, T, h, w)``, gaze pools ``(B, T, C)``,
            ``X̃'_{T-1}`` ``(B, C, h, w)``, hidden states ``(T, B, C, h, w)``.
        """
        b, c, h, w = x_prime.shape
        hidden = torch.zeros_like(x_prime)  # H_0
        cell = torch.zeros_like(x_prime)  # C_0
        attention, pooled, states = [], [], []
        x_tilde = x_prime
        for _ in range(self.steps):
            z = self.v_a(torch.tanh(self.w_a(x_prime) + self.u_a(hidden)))  # Z_t (B, 1, h, w), Eq. 1
            a = torch.softmax(z.view(b, h * w), dim=1).view(b, 1, h, w)  # A_t, Eq. 2
            x_tilde = a * x_prime * (h * w) if self.rescale else a * x_prime  # X̃'_t, Eq. 3
            i = torch.sigmoid(self.w_i(x_tilde) + self.u_i(hidden))  # Eq. 4
            f = torch.sigmoid(self.w_f(x_tilde) + self.u_f(hidden))  # Eq. 5
            o = torch.sigmoid(self.w_o(x_tilde) + self.u_o(hidden))  # Eq. 6
            g = torch.tanh(self.w_g(x_tilde) + self.u_g(hidden))  # Eq. 7
            cell = f * cell + i * g  # Eq. 8
            hidden = o * torch.tanh(cell)  # Eq. 9
            attention.append(a)
            pooled.append(x_tilde.mean(dim=(2, 3)))  # GAP(X̃'_t) (B, C)
            states.append(hidden)
        return (
            torch.cat(attention, dim=1),  # (B, T, h, w)
            torch.stack(pooled, dim=1),  # (B, T, C)
            x_tilde,
            torch.stack(states, dim=0),  # (T, B, C, h, w)
        )


class BaselineDecoder(nn.Module):
    """Structure decoder and classifier (Fig. 3), called once per step.

    Shape:
        ``forward(h_t, skips)``: ``(B, C, h, w)`` and the encoder's ``(pool1, pool2, pool3)`` →
        mask logits ``(B, H, W)`` and structure logits ``(B, 6)`` of that step.
    """

    def __init__(self, blocks: nn.ModuleList, classifier: nn.Module, skip: bool):
        super().__init__()
        self.blocks = blocks
        self.classifier = classifier
        self.skip = skip

    def forward(self, h_t: Tensor, skips: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        x = h_t
        pools = []
        for block, skip in zip(self.blocks, reversed(skips), strict=True):  # pool3, pool2, pool1
            if self.skip:
                x = (x + skip) / 2
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            pools.append(x.mean(dim=(2, 3)))  # GAP before the block (B, c)
            x = block(x)
        return x[:, 0], self.classifier(torch.cat(pools, dim=1))  # (B, H, W), (B, 6)


class BaselineHead(nn.Module):
    """The diagnosis top of Fig. 4 from plain layers copied from the model's head.

    ``GapHead``: GAP of blocks 4-5, concatenated with the gaze pools (reduced first by a dense layer
    for ``deco_gap_17``), one dense layer. ``FCHead``: adaptive pool to 7×7 and torchvision's FC top.

    Shape:
        ``forward(f, pooled)``: ``(B, 512, h, w)`` and ``(B, T, C)`` → ``(B, 2)``.
    """

    def __init__(self, head: nn.Module):
        super().__init__()
        if isinstance(head, GapHead):
            self.kind = "gap"
            self.gaze = bool(head.gaze_channels)
            self.reduce = copy.deepcopy(head.reduce)
            self.fc = copy.deepcopy(head.fc)
        elif isinstance(head, FCHead):
            self.kind = "fc"
            self.avgpool = copy.deepcopy(head.avgpool)
            self.classifier = copy.deepcopy(head.classifier)
        else:
            raise ValueError(f"unknown diagnosis head {type(head).__name__}")

    def forward(self, f: Tensor, pooled: Tensor) -> Tensor:
        if self.kind == "fc":
            return self.classifier(torch.flatten(self.avgpool(f), 1))  # (B, c, 7, 7) -> (B, 49c)
        g = f.mean(dim=(2, 3))  # (B, 512)
        if self.gaze:
            gaze = pooled.flatten(1)  # (B, T, C) -> (B, T*C)
            if self.reduce is not None:
                gaze = self.reduce(gaze)
            g = torch.cat([g, gaze], dim=1)
        return self.fc(g)


class Baseline(nn.Module):
    """The straightforward gaze network (see the module docstring). Build it with :meth:`from_gazenet`.

    Shape:
        ``forward(images)``: ``(B, 3, H, W)`` → :class:`~dermogaze.models.GazeOutput`, like the model.
    """

    def __init__(
        self,
        *,
        encoder: nn.Sequential,
        attention: BaselineAttentiveConvLSTM,
        decoder: BaselineDecoder | None,
        diagnosis_blocks: nn.Sequential,
        head: nn.Module,
        source: str,
        fixed_batch_norms: list[nn.BatchNorm2d],
    ):
        super().__init__()
        self.encoder = encoder
        self.attention = attention
        self.decoder = decoder
        self.diagnosis = nn.Module()
        self.diagnosis.blocks = diagnosis_blocks
        self.diagnosis.head = head
        self.source = source
        self._fixed_batch_norms = fixed_batch_norms  # plain list: not registered twice
        self.train(True)

    @classmethod
    def from_gazenet(cls, model: GazeNet) -> Baseline:
        """Copy ``model``'s weights (and batch-norm statistics) into a baseline.

        The encoder's weights require a gradient in the copy even when ``model``'s encoder is
        frozen (the baseline computes the backward an lr of 0 throws away); its batch norms keep
        the model's behaviour (fixed statistics when the model's encoder is frozen or its VGG
        batch norms are ``"frozen"``), so both compute the same function.

        Raises:
            ValueError: a variant without the attentive ConvLSTM (nothing to compare).
        """
        if model.attention is None:
            raise ValueError(f"model {model.variant} has no attentive ConvLSTM: the baseline needs one")
        att = model.attention
        c = att.channels
        base_att = BaselineAttentiveConvLSTM(
            c, att.steps, kernel_size=att.w_a.kernel_size[0], rescale=att.rescale
        ).to(att.w_a.weight.device)
        with torch.no_grad():
            base_att.w_a.weight.copy_(att.w_a.weight)
            base_att.w_a.bias.copy_(att.w_a.bias)
            base_att.v_a.weight.copy_(att.v_a.weight)
            for k, name in enumerate(RECURRENT_ORDER):  # u_h = [U_a; U_i; U_f; U_o; U_g]
                getattr(base_att, f"u_{name}").weight.copy_(att.u_h.weight[k * c : (k + 1) * c])
            for k, name in enumerate(GATE_ORDER):  # w_x = [W_i; W_f; W_o; W_g]
                getattr(base_att, f"w_{name}").weight.copy_(att.w_x.weight[k * c : (k + 1) * c])
                getattr(base_att, f"w_{name}").bias.copy_(att.w_x.bias[k * c : (k + 1) * c])

        encoder = _copy_layers(model.encoder)
        for p in encoder.parameters():
            p.requires_grad_(True)  # lr 0 in the optimiser: autograd still runs through the encoder
        fixed = [m for m in encoder if isinstance(m, nn.BatchNorm2d)] if model.encoder.frozen else []
        if model.encoder.batch_norm == "frozen":  # "frozen batch normalization": no gradient to BN affine
            fixed = [m for m in encoder if isinstance(m, nn.BatchNorm2d)]
            for bn in fixed:
                bn.requires_grad_(False)

        blocks = _copy_layers(model.diagnosis.blocks)
        if model.diagnosis.blocks.batch_norm == "frozen" or model.diagnosis.blocks.frozen:
            fixed += [m for m in blocks if isinstance(m, nn.BatchNorm2d)]
        for name, p in blocks.named_parameters():
            src = model.diagnosis.blocks.get_parameter(name)
            p.requires_grad_(src.requires_grad)
        head = BaselineHead(model.diagnosis.head)

        decoder = None
        if model.decoder is not None:
            dec_blocks = nn.ModuleList(_copy_layers(block) for block in model.decoder.blocks)  # plain layers
            decoder = BaselineDecoder(dec_blocks, copy.deepcopy(model.decoder.classifier), model.decoder.skip)
        base = cls(
            encoder=encoder, attention=base_att, decoder=decoder, diagnosis_blocks=blocks, head=head,
            source=model.diagnosis.source, fixed_batch_norms=fixed,
        )
        base.train(model.training)
        return base.to(next(model.parameters()).device)

    def train(self, mode: bool = True) -> Baseline:
        """Like ``nn.Module.train``, but batch norms on fixed statistics stay in eval mode."""
        super().train(mode)
        for bn in getattr(self, "_fixed_batch_norms", []):
            bn.train(False)
        return self

    def forward(self, images: Tensor) -> GazeOutput:
        x = images
        skips = []
        for layer in self.encoder:  # VGG-16-BN blocks 1-3
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                skips.append(x)  # pool1 (B, 64, H/2, W/2), pool2, pool3 = X'
        x_prime = x  # (B, C, H/8, W/8)
        attention, pooled, last_attended, hidden = self.attention(x_prime)
        f = self.diagnosis.blocks(x_prime if self.source == "encoder" else last_attended)  # blocks 4-5
        logits = self.diagnosis.head(f, pooled)
        if self.decoder is None:
            return GazeOutput(logits=logits, attention=attention)
        masks, classes = [], []
        for t in range(hidden.shape[0]):  # the decoder once per step
            m, s = self.decoder(hidden[t], tuple(skips))
            masks.append(m)
            classes.append(s)
        mask_logits = torch.stack(masks, dim=1)  # (B, T, H, W)
        return GazeOutput(
            logits=logits,
            attention=attention,
            masks=torch.sigmoid(mask_logits),
            mask_logits=mask_logits,
            structure_logits=torch.stack(classes, dim=1),  # (B, T, 6)
        )

    def gazenet_tensors(self, grad: bool = False) -> dict[str, Tensor | None]:
        """The baseline's parameters (or gradients) under the model's parameter names.

        Fused tensors of the model (``attention.u_h``, ``attention.w_x``) are the per-gate pieces
        concatenated in the model's order; every other name maps one to one.

        Args:
            grad: return ``.grad`` (``None`` where a piece has no gradient) instead of the values.

        Returns:
            ``{model parameter name: tensor}`` for every parameter of the model's architecture.
        """
        def get(p: Tensor) -> Tensor | None:
            return p.grad if grad else p.detach()

        def cat(params: list[Tensor]) -> Tensor | None:
            parts = [get(p) for p in params]
            return None if any(t is None for t in parts) else torch.cat(parts, dim=0)

        att = self.attention
        out: dict[str, Tensor | None] = {}
        for name, p in self.named_parameters():
            if name.startswith("attention."):
                continue
            out[name] = get(p)
        out["attention.w_a.weight"] = get(att.w_a.weight)
        out["attention.w_a.bias"] = get(att.w_a.bias)
        out["attention.v_a.weight"] = get(att.v_a.weight)
        out["attention.u_h.weight"] = cat([getattr(att, f"u_{n}").weight for n in RECURRENT_ORDER])
        out["attention.w_x.weight"] = cat([getattr(att, f"w_{n}").weight for n in GATE_ORDER])
        out["attention.w_x.bias"] = cat([getattr(att, f"w_{n}").bias for n in GATE_ORDER])
        return out

    # ``{"encoder", "attention", "branches"}`` by top-level name, which the baseline shares with the model
    parameter_groups = GazeNet.parameter_groups
