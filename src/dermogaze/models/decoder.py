"""The branch for recurrent segmentation of dermoscopic structures (paper §3.1.2, Fig. 3).

Run on every hidden state ``H_t`` of the attentive ConvLSTM. Three decoder blocks, symmetric to the
encoder (SPEC §4, at 224 px and width 1)::

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

Decisions where SPEC §4 and the paper are silent:

* The ×2 upsampling is nearest-neighbour (``nn.Upsample``'s default; also the authors' code). The
  GAP "before each block" is taken right after the skip averaging: nearest upsampling replicates
  each cell four times, so this equals the GAP of the upsampled map exactly, at a quarter of the cost.
* Structure classifier: ``448 → 224 → 6`` (hidden size = half the input, as the authors' code),
  with a ReLU between the two dense layers (without it two dense layers are one linear map).
  It returns logits; the softmax of Fig. 3 lives in the loss / at inference.
* Conv biases are kept (as in torchvision's VGG); BN is trainable here even when the VGG parts
  have ``batch_norm="frozen"`` (there are no ImageNet statistics for a decoder). With
  ``batch_norm=False`` the BN layers are absent.
* Memory (issue 6), also exact: in training, each ``BN → ReLU → conv`` stores only the batch
  norm's input and recomputes the ReLU's output in the backward pass, one step group at a time
  (:class:`_BatchNormReLUConv`), and on the CPU the decoder runs in channels-last layout (oneDNN's
  own: its convolutions then make no full-size reorder copies).
* Speed (issue 6), all exact: the decoder runs ONCE on all ``T`` steps as one batch of ``T*B``
  maps (step-major), not ``T`` times; the skip maps are broadcast over the steps, never copied;
  in training mode each batch norm still normalises every step's ``B`` maps with their own
  statistics (and updates its running statistics once per step), so the batched decoder computes
  exactly what ``T`` separate calls compute, losses and gradients included;
  each upsampling is folded into the next convolution (a stride-2 transposed convolution with
  16/36 of the multiply-adds, :func:`upsample_conv3x3`); the one-channel mask convolution avoids
  oneDNN's slow single-output path (:func:`conv3x3_single_output`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structures import NUM_STRUCTURES

#: Convolutions per decoder block: the encoder's (2, 2, 3) in reverse.
CONVS_PER_BLOCK: tuple[int, ...] = (3, 2, 2)


#: Nearest ×2 upsampling followed by a 3-tap filter ``(w0, w1, w2)`` (zero padding 1) equals a stride-2
#: transposed filter of 4 taps: input cell ``m`` reaches outputs ``2m-1 .. 2m+2`` with weights
#: ``(w2, w1+w2, w0+w1, w0)``. Row ``k`` of this matrix gives tap ``k`` from ``(w0, w1, w2)``.
_UPSAMPLE_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def upsample_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None, taps: Tensor | None = None) -> Tensor:
    """``conv3x3(nearest_upsample_x2(x))`` (padding 1) computed as one stride-2 transposed convolution.

    Exact up to float rounding, with 16 instead of 36 multiply-adds per input cell and output channel
    pair (4 output cells × 9 taps), and without materialising (or storing for backward) the
    upsampled map. The 4×4 transposed kernel is derived from the 3×3 weight at every call, so
    gradients reach ``weight`` as usual.

    Args:
        x: ``(N, C, h, w)``.
        weight: ``(O, C, 3, 3)`` of the convolution applied after the upsampling.
        bias: ``(O,)`` or ``None``.
        taps: :data:`_UPSAMPLE_TAPS` as a ``(4, 3)`` tensor on the weight's device (made if ``None``).

    Returns:
        ``(N, O, 2h, 2w)``.
    """
    if taps is None:
        taps = torch.tensor(_UPSAMPLE_TAPS, device=weight.device)
    taps = taps.to(weight.dtype)  # (4, 3)
    kernel = torch.einsum("ki,lj,ocij->cokl", taps, taps, weight)  # (C, O, 4, 4), transposed-conv layout
    return F.conv_transpose2d(x, kernel, bias, stride=2, padding=1)


def conv3x3_single_output(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 3×3 convolution (padding 1) with ONE output channel, as a 1×1 convolution to 9 maps + 9 shifts.

    oneDNN handles one output channel poorly (a few GFLOP/s on CPU); projecting onto the 9 taps
    first (a matrix product) and adding the 9 shifted maps gives the same result several times
    faster, forward and backward. The shifted sum is itself a fixed 3×3 convolution of the 9 maps
    with one-hot kernels (tap ``k = 3·dy + dx`` is read at offset ``(dy, dx)``), which keeps the
    backward pass to two convolutions (a padded map and eight shifted slices would cost a
    zero-filled full-size map each in the backward pass).

    Args:
        x: ``(N, C, H, W)``; weight: ``(1, C, 3, 3)``; bias: ``(1,)`` or ``None``.

    Returns:
        ``(N, 1, H, W)``.
    """
    c = x.shape[1]
    per_tap = weight[0].permute(1, 2, 0).reshape(9, c, 1, 1)  # (C, 3, 3) -> (9 taps, C, 1, 1), row-major taps
    z = F.conv2d(x, per_tap)  # (N, 9, H, W): z_k = the map tap k contributes
    shifts = torch.eye(9, dtype=z.dtype, device=z.device).view(1, 9, 3, 3)  # tap k -> kernel position divmod(k, 3)
    return F.conv2d(z, shifts, bias, padding=1)  # out[y, x] = Σ_k z_k[y + dy_k - 1, x + dx_k - 1] + bias


def _normalise_relu(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``relu(x * scale + shift)`` per channel, in a new tensor laid out like ``x``.

    Args:
        x: ``(N, C, H, W)`` (contiguous or channels-last); scale, shift: ``(C,)``.
    """
    out = torch.empty_like(x)  # keeps x's memory format
    c = x.shape[1]
    torch.addcmul(shift.view(1, c, 1, 1), x, scale.view(1, c, 1, 1), out=out)
    return out.relu_()


def _memory_format(x: Tensor) -> torch.memory_format:
    """``channels_last`` for a (non-trivially) channels-last tensor, else ``contiguous_format``."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _BatchNormReLUConv(torch.autograd.Function):
    """``conv(relu(batch_norm(x)))`` in training mode, storing only ``x``, one step group at a time.

    The usual chain stores two full-size maps per layer: the batch norm's input (for its backward)
    and the ReLU's output (for the ReLU's and the next convolution's backward). This function keeps
    only the first and recomputes ``a = relu(bn(x))`` from it in the backward pass (a per-channel
    multiply-add; the next convolution is not recomputed: its gradients come from
    ``aten.convolution_backward`` on the recomputed ``a``). Both passes run over the ``steps``
    groups of ``x`` one after the other (each group has its own batch-norm statistics anyway), so
    ``a`` and the gradients' temporaries only ever exist for one group, ``1/T`` of the full size.

    With ``up_weight`` given, ``x`` is the block's input and the batch norm's input is
    ``upsample_conv3x3(x, up_weight, up_bias)``, computed group by group and recomputed in the
    backward pass instead of stored: the full-resolution block then never holds a full-size map.

    The results are those of the usual chain: the same statistics and running-statistic updates
    (per group, in step order, as :meth:`DecoderBlock.forward` says), PyTorch's own batch-norm
    backward kernel, the same convolutions.

    ``mode``: ``"conv"`` (3×3 convolution, padding 1), ``"single"`` (a one-output 3×3 convolution
    through :func:`conv3x3_single_output`, cheap enough to be re-run in the backward pass) or
    ``"none"`` (return ``a`` itself).

    Shape:
        ``x``: ``(steps*B, C, H, W)`` → ``(steps*B, C_out, H, W)`` (``C_out = C`` for ``"none"``);
        with ``up_weight``: ``(steps*B, C_in, H/2, W/2)`` → ``(steps*B, C_out, H, W)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        bn_weight: Tensor,
        bn_bias: Tensor,
        conv_weight: Tensor | None,
        conv_bias: Tensor | None,
        up_weight: Tensor | None,
        up_bias: Tensor | None,
        bn: nn.BatchNorm2d,
        steps: int,
        mode: str,
        taps: Tensor | None,
    ) -> Tensor:
        means, invstds = [], []
        out = None
        for t, x_t in enumerate(x.chunk(steps)):  # step-major: each group is one step's B maps
            if up_weight is not None:
                x_t = upsample_conv3x3(x_t, up_weight, up_bias, taps)
            n = x_t.shape[0] * x_t.shape[2] * x_t.shape[3]  # values per channel in a group
            var, mean = torch.var_mean(x_t, dim=(0, 2, 3), correction=0)  # (C,) each
            invstd = torch.rsqrt(var + bn.eps)
            bn.num_batches_tracked.add_(1)  # running statistics: one update per step, in step order
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
            bn.running_var.mul_(1 - m).add_(var, alpha=m * n / max(n - 1, 1))
            scale = bn_weight * invstd
            a_t = _normalise_relu(x_t, scale, bn_bias - mean * scale)
            del x_t
            if mode == "conv":
                y_t = F.conv2d(a_t, conv_weight, conv_bias, padding=1)
            elif mode == "single":
                y_t = conv3x3_single_output(a_t, conv_weight, conv_bias)
            else:
                y_t = a_t
            del a_t
            if out is None:  # the output, filled group by group (no concatenation copy)
                out = torch.empty(
                    (x.shape[0], *y_t.shape[1:]), dtype=y_t.dtype, device=y_t.device, memory_format=_memory_format(y_t)
                )
            out[t * y_t.shape[0] : (t + 1) * y_t.shape[0]].copy_(y_t)
            means.append(mean)
            invstds.append(invstd)
        ctx.save_for_backward(
            x, bn_weight, bn_bias, torch.stack(means), torch.stack(invstds), conv_weight, conv_bias, up_weight, up_bias,
            taps,
        )  # fmt: skip
        ctx.steps, ctx.mode, ctx.eps = steps, mode, bn.eps
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor):  # type: ignore[override]
        x, bn_weight, bn_bias, means, invstds, conv_weight, conv_bias, up_weight, up_bias, taps = ctx.saved_tensors
        steps, mode = ctx.steps, ctx.mode
        need = ctx.needs_input_grad
        need_w = mode != "none" and need[3]
        need_b = mode != "none" and conv_bias is not None and need[4]
        up = up_weight is not None
        need_up_w, need_up_b = up and need[5], up and up_bias is not None and need[6]
        grad_x = torch.empty_like(x)
        grad_bn_w, grad_bn_b = torch.zeros_like(bn_weight), torch.zeros_like(bn_bias)
        grad_cw = torch.zeros_like(conv_weight) if need_w else None
        grad_cb = torch.zeros_like(conv_bias) if need_b else None
        gw, gb = torch.empty_like(bn_weight), torch.empty_like(bn_bias)
        if up:
            # (C_in, C_out, 4, 4) transposed-conv kernel, as in upsample_conv3x3
            kernel = torch.einsum("ki,lj,ocij->cokl", taps.to(up_weight.dtype), taps.to(up_weight.dtype), up_weight)
            grad_kernel = torch.zeros_like(kernel) if need_up_w else None
            grad_ub = torch.zeros_like(up_bias) if need_up_b else None
        groups = zip(x.chunk(steps), grad.chunk(steps), grad_x.chunk(steps), strict=True)
        for t, (x_t, g_t, out_t) in enumerate(groups):
            c_t = upsample_conv3x3(x_t, up_weight, up_bias, taps) if up else x_t  # the batch norm's input
            scale = bn_weight * invstds[t]
            a_t = _normalise_relu(c_t, scale, bn_bias - means[t] * scale)  # recomputed, bit for bit the forward's
            if mode == "conv":
                g_a, g_w, g_b = torch.ops.aten.convolution_backward(
                    g_t.contiguous(memory_format=_memory_format(a_t)), a_t, conv_weight,
                    None if conv_bias is None else [conv_bias.shape[0]], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                    [True, need_w, need_b],
                )  # fmt: skip
            elif mode == "single":
                with torch.enable_grad():
                    leaves = [a_t.detach().requires_grad_(), conv_weight.detach().requires_grad_()]
                    if conv_bias is not None:
                        leaves.append(conv_bias.detach().requires_grad_())
                    y_t = conv3x3_single_output(leaves[0], leaves[1], leaves[2] if conv_bias is not None else None)
                    grads = torch.autograd.grad(y_t, leaves, g_t)
                g_a, g_w = grads[0], grads[1]
                g_b = grads[2] if conv_bias is not None else None
            else:
                g_a = g_w = g_b = None
            if g_a is None:  # the incoming gradient is not ours to modify
                g_a = torch.ops.aten.threshold_backward(g_t, a_t, 0)  # ReLU's backward (a = its output)
            else:
                g_a.masked_fill_(a_t <= 0, 0.0)  # ReLU's backward, in place on our own tensor
            del a_t
            if need_w:
                grad_cw += g_w
            if need_b:
                grad_cb += g_b
            g_c = torch.empty_like(c_t) if up else out_t  # gradient of the batch norm's input
            torch.ops.aten.native_batch_norm_backward.out(
                g_a, c_t, bn_weight, None, None, means[t], invstds[t], True, ctx.eps, [True, True, True],
                out0=g_c, out1=gw, out2=gb,
            )  # fmt: skip
            del g_a, c_t
            grad_bn_w += gw
            grad_bn_b += gb
            if up:  # backward of the upsampling transposed convolution (upsample_conv3x3)
                g_x, g_k, g_ub = torch.ops.aten.convolution_backward(
                    g_c, x_t, kernel, None if up_bias is None else [up_bias.shape[0]], [2, 2], [1, 1], [1, 1], True,
                    [0, 0], 1, [True, need_up_w, need_up_b],
                )  # fmt: skip
                out_t.copy_(g_x)
                if need_up_w:
                    grad_kernel += g_k
                if need_up_b:
                    grad_ub += g_ub
        grad_up_w = grad_up_b = None
        if up and need_up_w:
            t32 = taps.to(up_weight.dtype)
            grad_up_w = torch.einsum("ki,lj,cokl->ocij", t32, t32, grad_kernel)  # through the kernel's einsum
        if up and need_up_b:
            grad_up_b = grad_ub
        return grad_x, grad_bn_w, grad_bn_b, grad_cw, grad_cb, grad_up_w, grad_up_b, None, None, None, None


class DecoderBlock(nn.Sequential):
    """×2 nearest upsampling, then ``n`` conv 3×3 (+ BN + ReLU, except a bare last conv of the last block).

    The layers are ordinary modules (so parameters and state dict are those of the plain block);
    :meth:`forward` evaluates the same function faster: the upsampling is folded into the first
    convolution (:func:`upsample_conv3x3`) and a one-channel conv uses :func:`conv3x3_single_output`.
    Those two convolutions are evaluated from their modules' weights, so forward hooks registered on
    those ``nn.Conv2d`` modules do not fire (hook the block instead).

    Shape:
        ``(N, c_in, h, w) -> (N, c_out, 2h, 2w)``.
    """

    def __init__(self, c_in: int, c_out: int, n_convs: int, batch_norm: bool, last: bool):
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
        self.register_buffer("upsample_taps", torch.tensor(_UPSAMPLE_TAPS), persistent=False)
        #: Training: recompute the first convolution's output in the backward pass instead of storing it
        #: (the last, full-resolution block, where that map is the largest and the convolution cheap).
        self.recompute_first = last

    def forward(self, x: Tensor, steps: int = 1) -> Tensor:  # type: ignore[override]
        """Run the block on ``x``, which holds ``steps`` equal groups of maps (step-major).

        A batch norm in training mode normalises each group with that group's own statistics and
        updates its running statistics once per group, in step order: exactly as ``steps``
        separate calls of the block would (the decoder run on each ``H_t``).

        When training in float32 with gradients, each ``BN → ReLU → conv`` runs as
        :class:`_BatchNormReLUConv`, which stores one map per layer instead of two.
        """
        if self._low_memory(x):
            return self._forward_low_memory(x, steps)
        for i, layer in enumerate(self):
            if i == 0:
                x = upsample_conv3x3(x, layer.weight, layer.bias, self.upsample_taps)
            elif isinstance(layer, nn.Conv2d) and layer.out_channels == 1:
                x = conv3x3_single_output(x, layer.weight, layer.bias)
            elif isinstance(layer, nn.BatchNorm2d) and layer.training and steps > 1:
                x = torch.cat([layer(group) for group in x.chunk(steps)], dim=0)  # statistics per step
            else:
                x = layer(x)
        return x


    def _units(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
        """``(conv, batch norm or None)`` per convolution, in order (a ReLU follows every batch norm)."""
        units: list[tuple[nn.Conv2d, nn.BatchNorm2d | None]] = []
        for layer in self:
            if isinstance(layer, nn.Conv2d):
                units.append((layer, None))
            elif isinstance(layer, nn.BatchNorm2d):
                units[-1] = (units[-1][0], layer)
        return units

    def _low_memory(self, x: Tensor) -> bool:
        """Whether :meth:`_forward_low_memory` applies: training, gradients, float32, affine batch norms."""
        if not (self.training and torch.is_grad_enabled() and x.dtype == torch.float32):
            return False
        try:
            if torch.is_autocast_enabled(x.device.type):
                return False
        except RuntimeError:  # a device type without autocast (e.g. "meta")
            pass
        bns = [m for m in self if isinstance(m, nn.BatchNorm2d)]
        return bool(bns) and all(bn.affine and bn.track_running_stats for bn in bns)

    def _forward_low_memory(self, x: Tensor, steps: int) -> Tensor:
        units = self._units()
        conv0 = units[0][0]
        if not self.recompute_first:
            x = upsample_conv3x3(x, conv0.weight, conv0.bias, self.upsample_taps)
        for k, (_, bn) in enumerate(units):
            if bn is None:  # the bare last convolution, already applied by the previous unit
                break
            nxt = units[k + 1][0] if k + 1 < len(units) else None
            mode = "none" if nxt is None else ("single" if nxt.out_channels == 1 else "conv")
            up = k == 0 and self.recompute_first
            x = _BatchNormReLUConv.apply(
                x, bn.weight, bn.bias, None if nxt is None else nxt.weight, None if nxt is None else nxt.bias,
                conv0.weight if up else None, conv0.bias if up else None, bn, steps, mode, self.upsample_taps,
            )  # fmt: skip
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
        num_structures: classes of ``pred_t`` (6).

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
    ):
        super().__init__()
        levels = tuple(reversed(tuple(skip_channels)))  # (256, 128, 64): input channels of blocks 1-3
        if len(levels) != len(CONVS_PER_BLOCK):
            raise ValueError(f"expected {len(CONVS_PER_BLOCK)} skip levels, got {len(levels)}")
        if levels[0] != in_channels:
            raise ValueError(f"hidden channels {in_channels} differ from the deepest skip's {levels[0]}")
        outs = (*levels[1:], 1)  # (128, 64, 1)
        self.skip = skip
        self.batch_norm = batch_norm
        self.blocks = nn.ModuleList(
            DecoderBlock(c_in, c_out, n, batch_norm, last=(k == len(levels) - 1))
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
        fmt = torch.channels_last if x.device.type == "cpu" else _memory_format(x)
        x = x.contiguous(memory_format=fmt)  # oneDNN's native layout on CPU: no reorder copies
        pools = []
        for block, skip in zip(self.blocks, reversed(tuple(skips)), strict=True):  # pool3, pool2, pool1
            if self.skip:
                # (T, B, c, h', w') + (B, c, h', w') broadcast over T -> (T*B, c, h', w')
                skip = skip.contiguous(memory_format=fmt)
                x = (x.unflatten(0, (steps, batch)) + skip).mul_(0.5).flatten(0, 1).contiguous(memory_format=fmt)
            pools.append(x.mean(dim=(2, 3)))  # GAP before the block (T*B, c)
            x = block(x, steps)  # ×2 nearest upsampling (folded into the first conv) and the block
        # (T*B, 1, H, W) -> (T, B, H, W) -> (B, T, H, W)
        mask_logits = x[:, 0].unflatten(0, (steps, batch)).transpose(0, 1).contiguous()
        structure = self.classifier(torch.cat(pools, dim=1))  # (T*B, 448) -> (T*B, 6)
        structure_logits = structure.view(steps, batch, -1).transpose(0, 1).contiguous()  # (B, T, 6)
        return mask_logits, structure_logits
