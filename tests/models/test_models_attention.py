"""The attentive ConvLSTM against Eqs. 1-9 written out here with one ``F.conv2d`` per term."""

import pytest
import torch
import torch.nn.functional as F

from dermogaze.models.attention import AttentiveConvLSTM

C, H, W, B = 6, 5, 7, 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def conv(x, w, b=None):
    return F.conv2d(x, w, b, padding=1)


def random_equation_weights(gen):
    """Separate, unfused weights for every term of Eqs. 1-9 (3×3 kernels, C channels)."""
    def k(out=C):
        return torch.randn(out, C, 3, 3, generator=gen) * 0.2

    def b():
        return torch.randn(C, generator=gen) * 0.2

    p = {"W_a": k(), "b_a": b(), "U_a": k(), "V_a": k(1)}
    for g in "ifog":
        p[f"W_{g}"], p[f"U_{g}"], p[f"b_{g}"] = k(), k(), b()
    return p


def load_into(module, p):
    """Put the separate weights into the fused module, in the layout its docstring documents."""
    with torch.no_grad():
        module.w_a.weight.copy_(p["W_a"])
        module.w_a.bias.copy_(p["b_a"])
        module.v_a.weight.copy_(p["V_a"])
        module.u_h.weight.copy_(torch.cat([p["U_a"], p["U_i"], p["U_f"], p["U_o"], p["U_g"]]))
        module.w_x.weight.copy_(torch.cat([p["W_i"], p["W_f"], p["W_o"], p["W_g"]]))
        module.w_x.bias.copy_(torch.cat([p["b_i"], p["b_f"], p["b_o"], p["b_g"]]))


def reference_step(p, x, h, c, rescale=True):
    """Eqs. 1-9, literally: every convolution separate."""
    z = conv(torch.tanh(conv(x, p["W_a"]) + conv(h, p["U_a"]) + p["b_a"].view(1, -1, 1, 1)), p["V_a"])  # Eq. 1
    e = torch.exp(z - z.amax(dim=(2, 3), keepdim=True))
    a = e / e.sum(dim=(2, 3), keepdim=True)  # Eq. 2
    x_t = a * x * (H * W if rescale else 1.0)  # Eq. 3 (rescaled by h*w, see attention.py)

    def gate(g, act):
        return act(conv(x_t, p[f"W_{g}"]) + conv(h, p[f"U_{g}"]) + p[f"b_{g}"].view(1, -1, 1, 1))

    i, f, o = gate("i", torch.sigmoid), gate("f", torch.sigmoid), gate("o", torch.sigmoid)  # Eqs. 4-6
    g = gate("g", torch.tanh)  # Eq. 7
    c_new = f * c + i * g  # Eq. 8
    h_new = o * torch.tanh(c_new)  # Eq. 9
    return a, x_t, h_new, c_new


@pytest.fixture
def setup():
    gen = torch.Generator().manual_seed(0)
    p = random_equation_weights(gen)
    module = AttentiveConvLSTM(C, steps=3)
    load_into(module, p)
    x = torch.rand(B, C, H, W, generator=gen) * 2
    return p, module, x, gen


@pytest.mark.parametrize("rescale", [True, False])
def test_one_step_equals_equations_with_fused_gates(setup, rescale):
    p, module, x, gen = setup
    module.rescale = rescale
    h = torch.randn(B, C, H, W, generator=gen)
    c = torch.randn(B, C, H, W, generator=gen)
    wa_x = module.w_a(x)
    a, x_t, h_new, c_new = module.step(x, wa_x, h, c)
    ra, rx, rh, rc = reference_step(p, x, h, c, rescale)
    for got, want in [(a, ra), (x_t, rx), (h_new, rh), (c_new, rc)]:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # The ConvLSTM part alone (Eqs. 4-9), from the same X̃'_t.
    u_gates = module.u_h(h)[:, C:]
    h2, c2 = module.cell(rx, u_gates, c)
    torch.testing.assert_close(h2, rh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c2, rc, atol=1e-5, rtol=1e-5)


def test_first_step_uses_zero_states(setup):
    p, module, x, _ = setup
    zeros = torch.zeros(B, C, H, W)
    got = module.step(x, module.w_a(x))  # H_0 = C_0 = None = 0
    for g, w in zip(got, reference_step(p, x, zeros, zeros), strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_forward_runs_the_recurrence_over_t_steps(setup):
    p, module, x, _ = setup
    out = module(x)
    h = c = torch.zeros(B, C, H, W)
    for t in range(module.steps):
        a, x_t, h, c = reference_step(p, x, h, c)
        torch.testing.assert_close(out.attention[:, t], a[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.pooled[:, t], x_t.mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.hidden[t], h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.last_attended, x_t, atol=1e-5, rtol=1e-5)
    # Without the hidden states, the same attention (H_{T-1} is simply not computed).
    lean = module(x, return_hidden=False)
    assert lean.hidden is None
    torch.testing.assert_close(lean.attention, out.attention)
    torch.testing.assert_close(lean.last_attended, out.last_attended)


def test_attention_sums_to_one_at_every_step(setup):
    _, module, x, _ = setup
    out = module(x)
    assert out.attention.shape == (B, module.steps, H, W)
    assert (out.attention > 0).all()
    torch.testing.assert_close(out.attention.sum(dim=(2, 3)), torch.ones(B, module.steps))
    assert out.attention[:, 0].std() > 1e-3  # random V_a: not uniform, so the test above means something


def test_initial_attention_is_uniform_and_rescaled_attention_returns_x():
    torch.manual_seed(0)
    module = AttentiveConvLSTM(C, steps=2)
    assert torch.count_nonzero(module.v_a.weight) == 0 and module.v_a.bias is None
    x = torch.rand(B, C, H, W)
    out = module(x)
    torch.testing.assert_close(out.attention[:, 0], torch.full((B, H, W), 1.0 / (H * W)))
    # Uniform A_t with the h*w rescaling gives back X' exactly; the literal Eq. 3 gives X'/(h*w).
    torch.testing.assert_close(out.last_attended, x)
    module.rescale = False
    torch.testing.assert_close(module(x).last_attended, x / (H * W))


def test_initialisation():
    torch.manual_seed(0)
    module = AttentiveConvLSTM(C, steps=2)
    for block in module.u_h.weight.chunk(5):  # U_a, U_i, U_f, U_o, U_g: orthonormal rows
        m = block.reshape(C, -1)
        torch.testing.assert_close(m @ m.T, torch.eye(C), atol=1e-5, rtol=0)
    bias = module.w_x.bias.detach()
    torch.testing.assert_close(bias[C : 2 * C], torch.ones(C))  # forget gate
    assert torch.count_nonzero(bias[:C]) == 0 and torch.count_nonzero(bias[2 * C :]) == 0


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps"):
        AttentiveConvLSTM(C, steps=0)
