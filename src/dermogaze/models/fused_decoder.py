"""The structure decoder's fast path: a decoder block (Fig. 3) computed faster and with less memory.

:class:`~dermogaze.models.decoder.DecoderBlock` with ``fused=True`` (the default) runs
:func:`fused_block_forward` instead of its plain formulation (nearest ×2 upsampling, then conv 3×3 +
BN + ReLU layers, each batch norm in training mode normalising every step's maps with their own
statistics). The layers, parameters and state dict are the plain block's; only the evaluation
differs, and it computes the same function, up to float rounding, forward and backward:

* **Upsampling folded into the next convolution.** Nearest ×2 upsampling followed by a 3-tap filter
  ``(w0, w1, w2)`` (zero padding 1) is a stride-2 transposed filter of 4 taps (see
  :data:`_UPSAMPLE_TAPS`), so ``conv3x3(upsample(x))`` is one stride-2 transposed convolution whose
  4×4 kernel is derived from the 3×3 weight at every call (:func:`upsample_conv3x3`): 16 instead of
  36 multiply-adds per input cell and channel pair, and no upsampled map, stored or not.
* **The one-channel mask convolution** is a 1×1 convolution onto the 9 taps followed by a fixed
  one-hot 3×3 convolution (:func:`conv3x3_single_output`): a sum of the same products, in a form
  oneDNN runs well (its direct one-output-channel convolution is slow on the CPU).
* **Memory, in training** (float32, gradients, no autocast, affine batch norms with running
  statistics): each ``BN → ReLU → conv`` stores only the batch norm's input and recomputes the
  ReLU's output in the backward pass, one step group at a time (:class:`_BatchNormReLUConv`); in the
  last block, at full resolution, the first (upsampling) convolution's output is recomputed too
  instead of stored. Exact because the statistics and running-statistic updates are
  ``nn.BatchNorm2d``'s (biased variance to normalise, unbiased for the running variance, once per
  step in step order), the backward passes are PyTorch's own kernels
  (``aten.native_batch_norm_backward``, ``aten.convolution_backward``), and the recomputed maps are
  bit for bit the forward's (same operations on the same inputs). The recomputation costs time (about
  10% of a training step at the demo's size), so it runs only where the block's input holds at least
  :data:`LOW_MEMORY_MIN_ELEMENTS` values (every block of the paper's 224-px decoder at batch 8); the
  smaller maps of the demo's network are stored as autograd stores them.

Outside training (or in float64, under autocast, without batch norm) the two convolution tricks
apply and every other layer runs as its module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Nearest ×2 upsampling followed by a 3-tap filter ``(w0, w1, w2)`` (zero padding 1) equals a stride-2
#: transposed filter of 4 taps: input cell ``m`` reaches outputs ``2m-1 .. 2m+2`` with weights
#: ``(w2, w1+w2, w0+w1, w0)``. Row ``k`` of this matrix gives tap ``k`` from ``(w0, w1, w2)``.
_UPSAMPLE_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))

#: The training path that recomputes instead of storing (:func:`_forward_low_memory`) runs for a block whose
#: input ``(T·B, C, h, w)`` holds at least this many values (4 Mi: 16 MB of float32; the demo's largest
#: input holds 1 Mi, the paper configuration's 7.7-31 Mi at batch 8).
LOW_MEMORY_MIN_ELEMENTS = 1 << 22


def make_upsample_taps() -> Tensor:
    """:data:`_UPSAMPLE_TAPS` as a ``(4, 3)`` tensor (a fused block keeps it as a non-persistent buffer)."""
    return torch.tensor(_UPSAMPLE_TAPS)


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

    oneDNN handles one output channel poorly on the CPU; projecting onto the 9 taps first (a matrix
    product) and adding the 9 shifted maps gives the same result faster, forward and backward. The
    shifted sum is itself a fixed 3×3 convolution of the 9 maps with one-hot kernels (tap
    ``k = 3·dy + dx`` is read at offset ``(dy, dx)``), which keeps the backward pass to two
    convolutions (a padded map and eight shifted slices would cost a zero-filled full-size map each
    in the backward pass).

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


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``channels_last`` for a (non-trivially) channels-last tensor, else ``contiguous_format``."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _normalise_relu(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``relu(x * scale + shift)`` per channel, in a new tensor laid out like ``x``.

    Args:
        x: ``(N, C, H, W)`` (contiguous or channels-last); scale, shift: ``(C,)``.
    """
    out = torch.empty_like(x)  # keeps x's memory format
    c = x.shape[1]
    torch.addcmul(shift.view(1, c, 1, 1), x, scale.view(1, c, 1, 1), out=out)
    return out.relu_()


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
    (per group, in step order, as :meth:`~dermogaze.models.decoder.DecoderBlock.forward` says),
    PyTorch's own batch-norm backward kernel, the same convolutions.

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
                shape = (x.shape[0], *y_t.shape[1:])
                out = torch.empty(shape, dtype=y_t.dtype, device=y_t.device, memory_format=memory_format_of(y_t))
            out[t * y_t.shape[0] : (t + 1) * y_t.shape[0]].copy_(y_t)
            means.append(mean)
            invstds.append(invstd)
        ctx.save_for_backward(
            x, bn_weight, bn_bias, torch.stack(means), torch.stack(invstds),
            conv_weight, conv_bias, up_weight, up_bias, taps,
        )
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
                    g_t.contiguous(memory_format=memory_format_of(a_t)), a_t, conv_weight,
                    None if conv_bias is None else [conv_bias.shape[0]],
                    [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, need_w, need_b],
                )  # stride, padding, dilation, transposed, output padding, groups, output mask
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
            )
            del g_a, c_t
            grad_bn_w += gw
            grad_bn_b += gb
            if up:  # backward of the upsampling transposed convolution (upsample_conv3x3)
                g_x, g_k, g_ub = torch.ops.aten.convolution_backward(
                    g_c, x_t, kernel, None if up_bias is None else [up_bias.shape[0]],
                    [2, 2], [1, 1], [1, 1], True, [0, 0], 1, [True, need_up_w, need_up_b],
                )  # stride 2, padding 1, transposed
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


def fused_block_forward(block: nn.Sequential, x: Tensor, steps: int) -> Tensor:
    """:meth:`DecoderBlock.forward <dermogaze.models.decoder.DecoderBlock.forward>`, computed the fast way.

    The block's layers are evaluated from their weights (the upsampling folded into the first
    convolution, the one-channel convolution through :func:`conv3x3_single_output`, and in training
    :class:`_BatchNormReLUConv`), so forward hooks on those layers do not fire; hook the block.

    Args:
        block: a :class:`~dermogaze.models.decoder.DecoderBlock` built with ``fused=True`` (a sequence of
            conv, batch norm and ReLU layers with an ``upsample_taps`` buffer and a ``last`` flag; typed
            as ``nn.Sequential`` so that this module stays a leaf that the decoder imports).
        x: ``(steps*B, c_in, h, w)``, ``steps`` groups of maps, step-major.
        steps: ``T``; a training-mode batch norm normalises each group with its own statistics.

    Returns:
        ``(steps*B, c_out, 2h, 2w)``.
    """
    if _low_memory(block, x):
        return _forward_low_memory(block, x, steps)
    for i, layer in enumerate(block):
        if i == 0:
            x = upsample_conv3x3(x, layer.weight, layer.bias, block.upsample_taps)
        elif isinstance(layer, nn.Conv2d) and layer.out_channels == 1:
            x = conv3x3_single_output(x, layer.weight, layer.bias)
        elif isinstance(layer, nn.BatchNorm2d) and layer.training and steps > 1:
            x = torch.cat([layer(group) for group in x.chunk(steps)], dim=0)  # statistics per step
        else:
            x = layer(x)
    return x


def _units(block: nn.Sequential) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """``(conv, batch norm or None)`` per convolution, in order (a ReLU follows every batch norm)."""
    units: list[tuple[nn.Conv2d, nn.BatchNorm2d | None]] = []
    for layer in block:
        if isinstance(layer, nn.Conv2d):
            units.append((layer, None))
        elif isinstance(layer, nn.BatchNorm2d):
            units[-1] = (units[-1][0], layer)
    return units


def _low_memory(block: nn.Sequential, x: Tensor) -> bool:
    """Whether :func:`_forward_low_memory` applies: training, gradients, float32, affine batch norms, and an
    input of at least :data:`LOW_MEMORY_MIN_ELEMENTS` values."""
    if not (block.training and torch.is_grad_enabled() and x.dtype == torch.float32):
        return False
    if x.numel() < LOW_MEMORY_MIN_ELEMENTS:
        return False
    try:
        if torch.is_autocast_enabled(x.device.type):
            return False
    except RuntimeError:  # a device type without autocast (e.g. "meta")
        pass
    bns = [m for m in block if isinstance(m, nn.BatchNorm2d)]
    return bool(bns) and all(bn.affine and bn.track_running_stats for bn in bns)


def _forward_low_memory(block: nn.Sequential, x: Tensor, steps: int) -> Tensor:
    """The block as a chain of :class:`_BatchNormReLUConv`; the last block also recomputes its first conv."""
    units = _units(block)
    conv0 = units[0][0]
    recompute_first = block.last  # the full-resolution block: there that map is the largest and the conv cheap
    if not recompute_first:
        x = upsample_conv3x3(x, conv0.weight, conv0.bias, block.upsample_taps)
    for k, (_, bn) in enumerate(units):
        if bn is None:  # the bare last convolution, already applied by the previous unit
            break
        nxt = units[k + 1][0] if k + 1 < len(units) else None
        mode = "none" if nxt is None else ("single" if nxt.out_channels == 1 else "conv")
        up = k == 0 and recompute_first
        x = _BatchNormReLUConv.apply(
            x, bn.weight, bn.bias, None if nxt is None else nxt.weight, None if nxt is None else nxt.bias,
            conv0.weight if up else None, conv0.bias if up else None, bn, steps, mode, block.upsample_taps,
        )
    return x
