"""The attentive ConvLSTM (paper §3.1.1, Fig. 2, Eqs. 1-9), as in SAM (Cornia et al.).

Attentive model (Eqs. 1-3)::

    Z_t  = V_a * tanh(W_a * X' + U_a * H_{t-1} + b_a)            (Eq. 1)
    A_t  = softmax of Z_t over all h*w positions                  (Eq. 2)
    X̃'_t = A_t ⊙ X'                                               (Eq. 3, rescaled, see below)

ConvLSTM (Eqs. 4-9)::

    I_t = σ(W_i * X̃'_t + U_i * H_{t-1} + b_i)                     (Eq. 4)
    F_t = σ(W_f * X̃'_t + U_f * H_{t-1} + b_f)                     (Eq. 5)
    O_t = σ(W_o * X̃'_t + U_o * H_{t-1} + b_o)                     (Eq. 6)
    G_t = tanh(W_g * X̃'_t + U_g * H_{t-1} + b_g)                  (Eq. 7)
    C_t = F_t ⊙ C_{t-1} + I_t ⊙ G_t                               (Eq. 8)
    H_t = O_t ⊙ tanh(C_t)                                         (Eq. 9)

with ``H_0 = C_0 = 0`` (``t`` runs over ``0 .. T-1``; the paper's ``H_{t-1}`` at ``t = 0`` is ``H_0``).

Speed, without changing the equations:

* ``W_a * X' + b_a`` does not depend on ``t``: computed once per forward.
* Every convolution of ``H_{t-1}`` is one fused conv ``u_h`` with ``5C`` output channels, in the
  order ``[U_a; U_i; U_f; U_o; U_g]``; every convolution of ``X̃'_t`` is one fused conv ``w_x`` with
  ``4C`` outputs ``[W_i; W_f; W_o; W_g]`` whose bias is ``[b_i; b_f; b_o; b_g]``. A fused conv equals
  the separate convs stacked along the output channels (tests check it against Eqs. 1-9 written
  with separate ``F.conv2d`` calls).
* At ``t = 0``, ``H_0 = 0`` so the ``u_h`` convolution is skipped (it has no bias: the result is 0).
* ``H_{T-1}`` is only computed when asked for (the decoder needs it; the diagnosis branch does not).

Decisions where the paper is silent:

* All kernels are 3×3 with zero padding (SAM; the authors' code uses 3×3 with reflect padding),
  including ``V_a`` (C→1, no bias, zero-initialised as docs/design.md §4 says, so every attention map is
  uniform until ``V_a`` learns). ``b_a`` is the bias of the ``W_a`` convolution; the ``U``
  convolutions have no bias (one bias per equation).
* Initialisation: recurrent kernels ``U_a, U_i, U_f, U_o, U_g`` orthogonal, each block separately
  (each ``C × C·3·3`` block has orthonormal rows); input kernels ``W_a`` and ``W_*`` Glorot-uniform;
  biases zero except the forget gate's ``b_f = 1`` (the usual LSTM choice, so the memory is kept at
  the start of training).
* **Rescaled Eq. 3.** ``A_t`` sums to 1 over ``h*w`` cells (784 at 224 px), so ``A_t ⊙ X'`` is about
  ``1/784`` of ``X'``: the ConvLSTM would see almost nothing and blocks 4-5, made for ``X'``-sized
  inputs (ImageNet weights, frozen BN statistics), would see near-constant input. With
  ``rescale=True`` (the default) ``X̃'_t = (h·w) A_t ⊙ X'``: a uniform attention gives back ``X'``
  exactly, and ``GAP(X̃'_t) = Σ_ij A_t^{ij} X'_ij`` is the attention-weighted average of ``X'``.
  The attention maps returned (``A_t``) still sum to 1. ``rescale=False`` is the literal Eq. 3.
* **Precision.** The softmax of Eq. 2 runs in at least float32 under any autocast (CUDA's autocast does so
  itself; the CPU's would keep bfloat16), so ``A_t`` and ``X̃'_t`` are float32 and the convolutions
  around them run in the autocast precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Order of the fused recurrent convolution's output blocks (``u_h``) and of the input one (``w_x``).
RECURRENT_ORDER = ("a", "i", "f", "o", "g")
GATE_ORDER = ("i", "f", "o", "g")


@dataclass
class AttentionOutput:
    """What :class:`AttentiveConvLSTM` returns.

    Attributes:
        attention: ``A_t`` (Eq. 2), ``(B, T, h, w)``, each map sums to one.
        pooled: ``GAP(X̃'_t)``, ``(B, T, C)``.
        last_attended: ``X̃'_{T-1}``, ``(B, C, h, w)``.
        hidden: ``H_t`` for ``t = 0..T-1``, ``(T, B, C, h, w)`` (step-major, so that
            ``hidden.flatten(0, 1)`` is a view, also in ``channels_last``); ``None`` unless asked for.
    """

    attention: Tensor
    pooled: Tensor
    last_attended: Tensor
    hidden: Tensor | None


class AttentiveConvLSTM(nn.Module):
    """Attentive model + ConvLSTM run for ``T`` steps over the encoder output ``X'`` (Eqs. 1-9).

    Args:
        channels: ``C``, channels of ``X'`` and of the hidden state (256 at width 1).
        steps: ``T``, number of gazes.
        kernel_size: kernel of every convolution (3).
        rescale: multiply Eq. 3 by ``h*w`` (see the module docstring).

    Attributes:
        w_a: ``W_a`` and ``b_a`` (Eq. 1), ``C → C``.
        v_a: ``V_a`` (Eq. 1), ``C → 1``, no bias, zero-initialised.
        u_h: ``[U_a; U_i; U_f; U_o; U_g]`` (Eqs. 1, 4-7), ``C → 5C``, no bias.
        w_x: ``[W_i; W_f; W_o; W_g]`` with bias ``[b_i; b_f; b_o; b_g]`` (Eqs. 4-7), ``C → 4C``.

    Shape:
        ``forward(x_prime)``: ``X'`` ``(B, C, h, w)`` → :class:`AttentionOutput`.
    """

    def __init__(self, channels: int, steps: int, *, kernel_size: int = 3, rescale: bool = True):
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        c, pad = channels, kernel_size // 2
        self.channels = c
        self.steps = steps
        self.rescale = rescale
        self.padding = pad
        self.w_a = nn.Conv2d(c, c, kernel_size, padding=pad, bias=True)
        self.v_a = nn.Conv2d(c, 1, kernel_size, padding=pad, bias=False)
        self.u_h = nn.Conv2d(c, 5 * c, kernel_size, padding=pad, bias=False)
        self.w_x = nn.Conv2d(c, 4 * c, kernel_size, padding=pad, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c = self.channels
        nn.init.xavier_uniform_(self.w_a.weight)
        nn.init.zeros_(self.w_a.bias)
        nn.init.zeros_(self.v_a.weight)
        with torch.no_grad():
            for block in self.u_h.weight.chunk(len(RECURRENT_ORDER), dim=0):  # each (C, C, k, k)
                nn.init.orthogonal_(block)
            for block in self.w_x.weight.chunk(len(GATE_ORDER), dim=0):
                nn.init.xavier_uniform_(block)
            self.w_x.bias.zero_()
            self.w_x.bias[c : 2 * c].fill_(1.0)  # forget gate b_f = 1

    def attend(self, x_prime: Tensor, wa_x: Tensor, ua_h: Tensor | None) -> tuple[Tensor, Tensor]:
        """Attentive model, Eqs. 1-3.

        Args:
            x_prime: ``X'`` ``(B, C, h, w)``.
            wa_x: ``W_a * X' + b_a`` ``(B, C, h, w)``.
            ua_h: ``U_a * H_{t-1}`` ``(B, C, h, w)``, or ``None`` when ``H_{t-1} = 0``.

        Returns:
            ``A_t`` ``(B, 1, h, w)`` summing to one over positions, and ``X̃'_t`` ``(B, C, h, w)``.
        """
        pre = wa_x if ua_h is None else wa_x + ua_h
        z = self.v_a(torch.tanh(pre))  # Z_t (B, 1, h, w), Eq. 1
        b, _, h, w = z.shape
        dtype = torch.promote_types(z.dtype, torch.float32)  # float32 under autocast, float64 stays float64
        a = torch.softmax(z.reshape(b, h * w), dim=1, dtype=dtype).view(b, 1, h, w)  # A_t, Eq. 2
        x_tilde = x_prime * (a * (h * w) if self.rescale else a)  # X̃'_t, Eq. 3 (rescaled)
        return a, x_tilde

    def cell(self, x_tilde: Tensor, u_gates: Tensor | None, c_prev: Tensor | None) -> tuple[Tensor, Tensor]:
        """ConvLSTM update, Eqs. 4-9.

        Args:
            x_tilde: ``X̃'_t`` ``(B, C, h, w)``.
            u_gates: ``[U_i; U_f; U_o; U_g] * H_{t-1}`` ``(B, 4C, h, w)``, or ``None`` when ``H_{t-1} = 0``.
            c_prev: ``C_{t-1}`` ``(B, C, h, w)``, or ``None`` when it is 0.

        Returns:
            ``H_t`` and ``C_t``, each ``(B, C, h, w)``.
        """
        c = self.channels
        gates = self.w_x(x_tilde)  # (B, 4C, h, w): W_* * X̃'_t + b_*
        if u_gates is not None:
            gates = gates + u_gates
        i, f, o = torch.sigmoid(gates[:, : 3 * c]).chunk(3, dim=1)  # Eqs. 4-6
        g = torch.tanh(gates[:, 3 * c :])  # Eq. 7
        cell = i * g if c_prev is None else torch.addcmul(i * g, f, c_prev)  # Eq. 8
        hidden = o * torch.tanh(cell)  # Eq. 9
        return hidden, cell

    def _recurrent(self, h_prev: Tensor | None, need_gates: bool) -> tuple[Tensor | None, Tensor | None]:
        """``U_a * H_{t-1}`` and (if needed) ``[U_i; U_f; U_o; U_g] * H_{t-1}`` from one fused conv."""
        if h_prev is None:  # H_0 = 0 and the U convs have no bias: both terms are 0
            return None, None
        c = self.channels
        if not need_gates:
            return F.conv2d(h_prev, self.u_h.weight[:c], padding=self.padding), None
        u = self.u_h(h_prev)  # (B, 5C, h, w)
        return u[:, :c], u[:, c:]

    def step(
        self, x_prime: Tensor, wa_x: Tensor, h_prev: Tensor | None = None, c_prev: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One attentive ConvLSTM step (Eqs. 1-9); ``None`` states mean ``H_0 = C_0 = 0``.

        Returns:
            ``A_t`` ``(B, 1, h, w)``, ``X̃'_t``, ``H_t``, ``C_t`` (each ``(B, C, h, w)``).
        """
        ua_h, u_gates = self._recurrent(h_prev, need_gates=True)
        a, x_tilde = self.attend(x_prime, wa_x, ua_h)
        h, c = self.cell(x_tilde, u_gates, c_prev)
        return a, x_tilde, h, c

    def forward(self, x_prime: Tensor, *, return_hidden: bool = True) -> AttentionOutput:
        """Run ``T`` steps over ``X'``.

        Args:
            x_prime: ``X'`` ``(B, C, h, w)``.
            return_hidden: also return every ``H_t`` (needed by the structure decoder). Without it
                ``H_{T-1}`` is not computed, as nothing would use it.
        """
        steps = self.steps
        wa_x = self.w_a(x_prime)  # W_a * X' + b_a (B, C, h, w): once, it does not depend on t (Eq. 1)
        h = c = None
        attention, pooled, hidden = [], [], []
        x_tilde = x_prime
        for t in range(steps):
            need_cell = return_hidden or t < steps - 1
            ua_h, u_gates = self._recurrent(h, need_gates=need_cell)
            a, x_tilde = self.attend(x_prime, wa_x, ua_h)
            attention.append(a)
            pooled.append(x_tilde.mean(dim=(2, 3)))  # GAP(X̃'_t) (B, C)
            if need_cell:
                h, c = self.cell(x_tilde, u_gates, c)
                hidden.append(h)
        b, _, hh, ww = x_prime.shape
        hidden_t = None
        if return_hidden:
            hidden_t = torch.cat(hidden, dim=0).unflatten(0, (steps, b))  # (T*B, C, h, w) -> (T, B, C, h, w)
        return AttentionOutput(
            attention=torch.cat(attention, dim=1),  # (B, T, h, w)
            pooled=torch.stack(pooled, dim=1),  # (B, T, C)
            last_attended=x_tilde,  # X̃'_{T-1} (B, C, h, w)
            hidden=hidden_t,
        )
