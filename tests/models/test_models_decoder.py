"""The structure decoder (Fig. 3): the fused fast path computes what the plain formulation computes."""

import copy

import pytest
import torch

from conftest import randomise_batch_norm
from dermogaze.models import fused_decoder
from dermogaze.models.decoder import StructureDecoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SKIP_CHANNELS = (4, 8, 16)  # pool1, pool2, pool3 = X'
STEPS, BATCH, SIDE = 3, 2, 4  # H_t is (BATCH, 16, SIDE, SIDE); the masks are 8 × SIDE wide


def decoders(skip: bool, dtype: torch.dtype) -> tuple[StructureDecoder, StructureDecoder]:
    """A fused and a plain decoder with the same (non-trivial) weights and batch-norm statistics."""
    torch.manual_seed(0)
    fused = StructureDecoder(SKIP_CHANNELS[-1], SKIP_CHANNELS, skip=skip, fused=True)
    randomise_batch_norm(fused)
    plain = StructureDecoder(SKIP_CHANNELS[-1], SKIP_CHANNELS, skip=skip, fused=False)
    plain.load_state_dict(fused.state_dict(), strict=True)  # the switch changes no state-dict key
    return fused.to(dtype), plain.to(dtype)


def inputs(dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(1)
    hidden = torch.randn(STEPS, BATCH, SKIP_CHANNELS[-1], SIDE, SIDE, dtype=dtype)  # (T, B, C, h, w)
    skips = [torch.randn(BATCH, c, SIDE * 2 ** (2 - k), SIDE * 2 ** (2 - k), dtype=dtype)
             for k, c in enumerate(SKIP_CHANNELS)]  # pool1 (B, 4, 4h, 4w), pool2 (B, 8, 2h, 2w), pool3 (B, 16, h, w)
    return hidden.requires_grad_(), [s.requires_grad_() for s in skips]


def run(decoder, hidden, skips):
    """Outputs, a loss on both of them, and the gradients of the loss (parameters, then inputs)."""
    mask_logits, structure_logits = decoder(hidden, skips)
    g = torch.Generator().manual_seed(2)
    outputs = (mask_logits, structure_logits)
    loss = sum((out * torch.randn(out.shape, generator=g, dtype=out.dtype)).mean() for out in outputs)
    # allow_unused: without skip averaging the skip maps get no gradient (None)
    grads = torch.autograd.grad(loss, [*decoder.parameters(), hidden, *skips], allow_unused=True)
    return mask_logits, structure_logits, grads


def statistics(decoder):
    return {k: v for k, v in decoder.state_dict().items() if "running" in k or "num_batches" in k}


def backward_nodes(t: torch.Tensor) -> set[str]:
    """Names of every autograd node behind ``t``."""
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names


def test_the_fast_path_is_one_switch_and_keeps_the_state_dict():
    fused, plain = decoders(skip=True, dtype=torch.float32)
    assert all(b.fused for b in fused.blocks) and not any(b.fused for b in plain.blocks)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    assert not any("upsample_taps" in k for k in fused.state_dict())
    assert all("upsample_taps" in dict(b.named_buffers()) for b in fused.blocks)
    assert not any("upsample_taps" in dict(b.named_buffers()) for b in plain.blocks)  # only where needed
    assert StructureDecoder(16, SKIP_CHANNELS).blocks[0].fused  # fused by default


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_decoder_trains_like_the_plain_one(skip, dtype, monkeypatch):
    """Training mode, T = 3: the same mask and structure logits, gradients and running statistics.

    float32 runs the low-memory autograd function (checked; its size threshold lowered to these small maps),
    float64 the fused convolutions alone.
    """
    monkeypatch.setattr(fused_decoder, "LOW_MEMORY_MIN_ELEMENTS", 0)
    fused, plain = decoders(skip, dtype)
    fused.train(), plain.train()
    hidden, skips = inputs(dtype)
    got, want = run(fused, hidden, skips), run(plain, hidden, skips)
    low_memory = "_BatchNormReLUConvBackward" in backward_nodes(got[0])
    assert low_memory == (dtype == torch.float32)
    # Rounding only: float32 within ~1e-6 of each tensor's scale, float64 within ~1e-13. (The gradients of
    # conv biases followed by a batch norm are 0 up to rounding: hence absolute tolerances as well.)
    eps = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(got[0], want[0], atol=10 * eps, rtol=10 * eps)  # mask logits (B, T, H, W)
    torch.testing.assert_close(got[1], want[1], atol=eps, rtol=10 * eps)  # structure logits (B, T, 6)
    names = [n for n, _ in fused.named_parameters()] + ["hidden", "pool1", "pool2", "pool3"]
    for name, g_fused, g_plain in zip(names, got[2], want[2], strict=True):
        if g_plain is None:  # a skip map, without skip averaging
            assert g_fused is None and not skip, name
            continue
        torch.testing.assert_close(g_fused, g_plain, atol=eps / 10, rtol=10 * eps, msg=lambda m, n=name: f"{n}: {m}")
    stats_fused, stats_plain = statistics(fused), statistics(plain)
    for k, v in stats_plain.items():
        torch.testing.assert_close(stats_fused[k], v, atol=eps, rtol=eps, msg=lambda m, k=k: f"{k}: {m}")
    assert all(v == STEPS for k, v in stats_plain.items() if "num_batches" in k)  # one update per step


def test_small_maps_are_stored_not_recomputed(monkeypatch):
    """Below LOW_MEMORY_MIN_ELEMENTS values a block's input takes the fused convolutions without recomputation."""
    fused, plain = decoders(skip=True, dtype=torch.float32)
    fused.train(), plain.train()
    hidden, skips = inputs(torch.float32)
    monkeypatch.setattr(fused_decoder, "LOW_MEMORY_MIN_ELEMENTS", 1 << 40)  # above every block's input
    got, want = run(fused, hidden, skips), run(plain, hidden, skips)
    assert "_BatchNormReLUConvBackward" not in backward_nodes(got[0])
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    for g_fused, g_plain in zip(got[2], want[2], strict=True):
        if g_plain is not None:
            torch.testing.assert_close(g_fused, g_plain, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("skip", [True, False])
def test_fused_decoder_evaluates_like_the_plain_one(skip):
    fused, plain = decoders(skip, torch.float64)
    fused.eval(), plain.eval()
    hidden, skips = inputs(torch.float64)
    with torch.no_grad():
        got, want = fused(hidden, skips), plain(hidden, skips)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)


def test_plain_decoder_in_training_equals_one_call_per_step():
    """Batched over T, each training-mode batch norm sees each step's maps alone, in step order."""
    _, batched = decoders(skip=True, dtype=torch.float64)
    per_step = copy.deepcopy(batched)
    batched.train(), per_step.train()
    hidden, skips = inputs(torch.float64)
    with torch.no_grad():
        masks, classes = batched(hidden, skips)
        one = [per_step(hidden[t : t + 1], skips) for t in range(STEPS)]  # T separate calls
    torch.testing.assert_close(masks, torch.cat([m for m, _ in one], dim=1), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(classes, torch.cat([c for _, c in one], dim=1), atol=1e-12, rtol=1e-12)
    for k, v in statistics(per_step).items():
        torch.testing.assert_close(statistics(batched)[k], v, atol=1e-12, rtol=1e-12)
