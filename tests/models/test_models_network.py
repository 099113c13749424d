"""Every Table 3 variant at tiny width: shapes, gradients, freezing, switches, wiring, presets."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dermogaze.config import load_config
from dermogaze.errors import DermogazeError
from dermogaze.models import GazeOutput, build_model, list_models
from dermogaze.models.fused_decoder import conv3x3_single_output, upsample_conv3x3

TINY = 0.125  # 8/16/32/64 channels instead of 64/128/256/512
VARIANTS = ["vgg", "vgg_gap", "vgg_attconvlstm", "vgg_attconvlstm_gap", "deco_gap_3", "deco_gap_5", "deco_gap_17"]
WITH_ATTENTION = {"vgg_attconvlstm", "vgg_attconvlstm_gap", "deco_gap_3", "deco_gap_5", "deco_gap_17"}
WITH_DECODER = {"deco_gap_3", "deco_gap_5", "deco_gap_17"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(name, **kw):
    torch.manual_seed(0)
    return build_model(name, **{"width": TINY, "image_size": 32, "steps": 2, **kw})


def randomise_v_a(model):
    """V_a starts at zero (uniform attention, no gradient into W_a/U_a); make it non-zero for the checks."""
    if model.attention is not None:
        with torch.no_grad():
            model.attention.v_a.weight.normal_(0.0, 0.5)


def touch_all(out: GazeOutput):
    """A scalar that depends on every output."""
    loss = out.logits.square().mean()
    if out.masks is not None:
        loss = loss + out.masks.mean() + out.structure_logits.square().mean()
    return loss


def test_registry_lists_table_3():
    assert list_models() == VARIANTS


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("steps", [1, 3])
def test_output_shapes(name, size, steps):
    model = tiny(name, image_size=size, steps=steps).eval()
    b, h = 2, size // 8
    with torch.no_grad():
        out = model(torch.randn(b, 3, size, size))
    assert out.logits.shape == (b, 2)
    assert model.needs_masks == (name in WITH_DECODER)
    if name in WITH_ATTENTION:
        assert out.attention.shape == (b, steps, h, h)
    else:
        assert out.attention is None
    if name in WITH_DECODER:
        assert out.masks.shape == out.mask_logits.shape == (b, steps, size, size)
        assert out.structure_logits.shape == (b, steps, 6)
        torch.testing.assert_close(out.masks, torch.sigmoid(out.mask_logits))
    else:
        assert out.masks is None and out.mask_logits is None and out.structure_logits is None
    for v in (out.logits, out.attention, out.masks, out.structure_logits):
        assert v is None or torch.isfinite(v).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_every_trainable_parameter_gets_a_gradient(name):
    model = tiny(name).train()
    randomise_v_a(model)
    out = model(torch.randn(2, 3, 32, 32))
    for v in (out.logits, out.attention, out.masks, out.structure_logits):
        assert v is None or not torch.isnan(v).any()
    touch_all(out).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for n, p in trainable:
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


def batch_norm_state(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


def test_frozen_encoder_gets_no_gradient_and_keeps_its_statistics():
    model = tiny("deco_gap_5").freeze_encoder()  # batch_norm "on": only the freezing keeps the stats
    assert model.encoder_frozen and model.batch_norm == "on"
    before = batch_norm_state(model.encoder)
    decoder_before = batch_norm_state(model.decoder)
    model.train()
    assert all(not m.training for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    out = model(torch.randn(2, 3, 32, 32))
    touch_all(out).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    for k, v in batch_norm_state(model.encoder).items():
        assert torch.equal(v, before[k]), k
    # ... while the decoder's batch norm trains (its statistics move) and the rest gets gradients.
    assert any(not torch.equal(v, decoder_before[k]) for k, v in batch_norm_state(model.decoder).items())
    assert all(p.grad is not None for p in model.diagnosis.parameters())
    # No activations kept for the encoder: its outputs are not part of any graph.
    x_prime, skips = model.encoder(torch.randn(1, 3, 32, 32))
    assert x_prime.grad_fn is None and all(s.grad_fn is None for s in skips)
    assert model.parameter_groups()["encoder"] == []
    # Unfreezing restores the gradients.
    model.freeze_encoder(False).train()
    assert not model.encoder_frozen
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert all(m.training for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d))


def test_frozen_batch_norm_mode():
    model = tiny("deco_gap_3")
    assert model.init_kwargs["batch_norm"] == model.batch_norm == "frozen"
    vgg_parts = [model.encoder, model.diagnosis.blocks]
    before = [batch_norm_state(m) for m in vgg_parts]
    model.train()
    touch_all(model(torch.randn(2, 3, 32, 32))).backward()
    for part, state in zip(vgg_parts, before, strict=True):
        bns = [m for m in part.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(not bn.training for bn in bns)
        assert all(not p.requires_grad and p.grad is None for bn in bns for p in bn.parameters())
        assert all(torch.equal(v, state[k]) for k, v in batch_norm_state(part).items())
    # The convolutions of the VGG parts still train (the encoder is not frozen), the decoder's BN too.
    assert all(m.weight.grad is not None for m in model.encoder.modules() if isinstance(m, nn.Conv2d))
    decoder_bns = [m for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert decoder_bns and all(bn.training and bn.weight.grad is not None for bn in decoder_bns)


def test_batch_norm_off_removes_every_batch_norm():
    model = tiny("deco_gap_3", batch_norm="off")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.isfinite(model(torch.randn(1, 3, 32, 32)).logits).all()


def test_parameter_groups_partition_the_trainable_parameters():
    for name in VARIANTS:
        model = tiny(name)
        groups = model.parameter_groups()
        assert set(groups) == {"encoder", "attention", "branches"}
        ids = [id(p) for g in groups.values() for p in g]
        assert len(ids) == len(set(ids))
        assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
        assert {id(p) for p in groups["encoder"]} == {id(p) for p in model.encoder.parameters() if p.requires_grad}
        if model.attention is not None:
            assert {id(p) for p in groups["attention"]} == {id(p) for p in model.attention.parameters()}
        else:
            assert groups["attention"] == []


def plain_block(block, x):
    """A decoder block the plain way: upsample, then every layer as a module (nn.Conv2d included)."""
    x = F.interpolate(x, scale_factor=2, mode="nearest")
    for layer in block:
        x = layer(x)
    return x


def reference_decoder(decoder, hidden, skips, skip):
    """The decoder written as T separate passes (Fig. 3), from its own layers."""
    masks, classes = [], []
    for h in hidden:  # H_t (B, C, h, w)
        x, pools = h, []
        for block, s in zip(decoder.blocks, reversed(skips), strict=True):
            if skip:
                x = (x + s) / 2
            up = F.interpolate(x, scale_factor=2, mode="nearest")
            pools.append(up.mean(dim=(2, 3)))  # GAP before the block (after the upsampling)
            x = plain_block(block, x)
        masks.append(x[:, 0])
        classes.append(decoder.classifier(torch.cat(pools, dim=1)))
    return torch.stack(masks, dim=1), torch.stack(classes, dim=1)


@pytest.mark.parametrize("skip", [True, False])
def test_batched_decoder_equals_one_pass_per_step(skip):
    """In float64, so that the comparison sees the formulation and not float32 rounding (the batched decoder sums
    in another order: in float32 a few of 6,144 mask values differ by ~1e-5 for some random draws)."""
    torch.manual_seed(0)
    model = tiny("deco_gap_3", skip=skip, steps=3).eval().double()
    x_prime, skips = model.encoder(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    hidden = torch.randn(3, 2, *x_prime.shape[1:], dtype=torch.float64)  # (T, B, C, h, w)
    with torch.no_grad():
        masks, classes = model.decoder(hidden, skips)
        ref_masks, ref_classes = reference_decoder(model.decoder, hidden, list(skips), skip)
    torch.testing.assert_close(masks, ref_masks, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(classes, ref_classes, atol=1e-10, rtol=1e-10)
    # The switch matters: averaging with the skip maps changes the masks.
    model.decoder.skip = not skip
    with torch.no_grad():
        assert not torch.allclose(model.decoder(hidden, skips)[0], masks)


@pytest.mark.parametrize("n_in, n_out", [(8, 4), (5, 1)])
def test_fast_decoder_convolutions_equal_the_plain_ones(n_in, n_out):
    """Upsampling folded into the conv, and the one-channel conv: same values and gradients as the plain ops."""
    torch.manual_seed(0)
    x = torch.randn(3, n_in, 6, 7, requires_grad=True)
    w = torch.randn(n_out, n_in, 3, 3, requires_grad=True)
    b = torch.randn(n_out, requires_grad=True)
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    cases = [(upsample_conv3x3(x, w, b), F.conv2d(up, w, b, padding=1))]
    if n_out == 1:
        cases.append((conv3x3_single_output(up, w, b), F.conv2d(up, w, b, padding=1)))
    for got, want in cases:
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(want)
        for dg, dw in zip(torch.autograd.grad(got, (x, w, b), g), torch.autograd.grad(want, (x, w, b), g), strict=True):
            torch.testing.assert_close(dg, dw, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["deco_gap_3", "deco_gap_17"])
def test_diagnosis_wiring(name):
    """Fig. 4: blocks 4-5 on X̃'_{T-1} (on X' for deco_gap_17), GAP, concat with GAP(X̃'_t) = Σ A_t X'."""
    model = tiny(name, steps=3).eval()
    randomise_v_a(model)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(images)
        x_prime, _ = model.encoder(images)
        a = out.attention  # (B, T, h, w)
        gazes = torch.einsum("bthw,bchw->btc", a, x_prime)  # attention-weighted averages of X'
        h, w = a.shape[-2:]
        source = x_prime if name == "deco_gap_17" else x_prime * a[:, -1:] * (h * w)
        f = model.diagnosis.blocks(source).mean(dim=(2, 3))  # (B, 512w)
        head = model.diagnosis.head
        g = gazes.flatten(1)
        if name == "deco_gap_17":
            g = torch.relu(head.reduce[0](g))
        expected = head.fc(torch.cat([f, g], dim=1))
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-4)
    c = model.encoder.out_channels
    assert head.fc.in_features == model.diagnosis.blocks.out_channels + (c if name == "deco_gap_17" else 3 * c)


def test_channels_last_gives_the_same_outputs():
    model = tiny("deco_gap_3", steps=2).eval()
    randomise_v_a(model)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(images)
        model = model.to(memory_format=torch.channels_last)
        out = model(images.contiguous(memory_format=torch.channels_last))
    for name in ("logits", "attention", "masks", "structure_logits"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-5, rtol=1e-4)
    # It also trains in channels_last.
    model.train()
    touch_all(model(images.contiguous(memory_format=torch.channels_last))).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_init_kwargs_rebuild_the_same_architecture():
    model = tiny("deco_gap_17", steps=3, image_size=64)
    assert model.init_kwargs == dict(
        name="deco_gap_17", steps=3, image_size=64, width=TINY, skip=False, batch_norm="on", weights=None,
        num_structures=6,
    )
    again = build_model(**model.init_kwargs)
    again.load_state_dict(model.state_dict(), strict=True)
    assert again.variant == model.variant == "deco_gap_17"


@pytest.mark.parametrize(
    "name, kw, match",
    [
        ("deco_gap_9", {}, "unknown model 'deco_gap_9'"),
        ("deco_gap_3", {"image_size": 100}, "multiple of 32"),
        ("deco_gap_3", {"image_size": 16}, "multiple of 32"),
        ("deco_gap_3", {"steps": 0}, "steps"),
        ("deco_gap_3", {"width": 0}, "width"),
        ("deco_gap_3", {"batch_norm": "sometimes"}, "batch_norm"),
        ("deco_gap_3", {"skip": "yes"}, "skip"),
        ("vgg", {"skip": True}, "no structure decoder"),
        ("deco_gap_3", {"depth": 3}, "unknown model option"),
    ],
)
def test_bad_build_arguments_are_clear_errors(name, kw, match):
    with pytest.raises(DermogazeError, match=match):
        build_model(name, **kw)


def test_none_means_the_variant_default():
    model = build_model("deco_gap_5", width=TINY, image_size=32, steps=None, skip=None, batch_norm=None)
    assert (model.steps, model.decoder.skip, model.init_kwargs["batch_norm"]) == (5, False, "on")


def test_forward_rejects_bad_inputs():
    model = tiny("vgg_gap")
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize(
    "preset, skip, batch_norm, balancing",
    [("deco_gap_3", True, "frozen", "batch"), ("deco_gap_5", False, "on", "w'"), ("deco_gap_17", False, "on", "w")],
)
def test_decoder_presets(preset, skip, batch_norm, balancing):
    cfg = load_config(preset)
    assert cfg.model.name == preset and cfg.loss.balancing == balancing
    m = cfg.model
    model = build_model(m.name, steps=2, image_size=32, width=TINY, skip=m.skip, batch_norm=m.batch_norm)
    assert (model.decoder.skip, model.init_kwargs["batch_norm"]) == (skip, batch_norm)


@pytest.mark.parametrize("preset", ["vgg", "vgg_gap", "vgg_attconvlstm", "vgg_attconvlstm_gap"])
def test_baseline_presets(preset):
    cfg = load_config(preset)
    assert cfg.model.name == preset
    assert not build_model(preset, width=TINY, image_size=32, skip=cfg.model.skip).needs_masks


@pytest.mark.parametrize("name", sorted(WITH_ATTENTION))
def test_diagnose_from_the_state_equals_the_forward(name):
    model = tiny(name, steps=3).eval()
    randomise_v_a(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out, state = model.forward_with_state(x)
        assert torch.equal(model(x).logits, out.logits)
        torch.testing.assert_close(model.diagnose(state), out.melanoma_prob, rtol=0, atol=1e-6)
        torch.testing.assert_close(model.diagnose(state, torch.ones(3, dtype=torch.bool)), out.melanoma_prob)
        torch.testing.assert_close(model.diagnose(state, temperature=2.0), out.calibrated_melanoma_prob(2.0))
        # a per-image keep: image 0 loses gaze 0, the others keep everything
        keep = torch.ones(3, 3, dtype=torch.bool)
        keep[0, 0] = False
        per_image = model.diagnose(state, keep)
        alone = model.diagnose(state, torch.tensor([False, True, True]))
    torch.testing.assert_close(per_image[1:], out.melanoma_prob[1:])
    torch.testing.assert_close(per_image[0], alone[0])
    with pytest.raises(ValueError, match="keep must have shape"):
        model.diagnose(state, torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("name", ["vgg", "vgg_gap"])
def test_diagnose_ignores_keep_without_gazes(name):
    model = tiny(name, steps=3).eval()
    with torch.no_grad():
        out, state = model.forward_with_state(torch.randn(2, 3, 32, 32))
        assert state.pooled is None and state.last_attended is None
        p = model.diagnose(state, torch.zeros(3, dtype=torch.bool))
    torch.testing.assert_close(p, out.melanoma_prob, rtol=0, atol=1e-6)


def crafted_gap_model(reduce: bool = False):
    """A ``vgg_attconvlstm_gap`` whose blocks 4-5 are the identity and whose top is set by hand.

    ``C = 2`` channels, ``T = 3``: the melanoma margin is ``GAP(block input)[0] + Σ_t pool_t[0] · (t + 1)``
    (benign row zero, no bias), so every ablation can be computed by hand.
    """
    from dermogaze.models.diagnosis import GapHead

    model = tiny("vgg_attconvlstm_gap", steps=3).eval()
    c, steps = 2, 3
    model.diagnosis.blocks = nn.Identity()
    head = GapHead(c, gaze_channels=c, steps=steps, reduce=reduce)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.zero_()
        head.fc.weight[1, 0] = 1.0  # GAP of the blocks' input, channel 0
        if reduce:  # reduction = ReLU of the sum of the weighted channel-0 pools, into reduced channel 0
            head.reduce[0].weight.zero_()
            head.reduce[0].bias.zero_()
            for t in range(steps):
                head.reduce[0].weight[0, t * c] = t + 1.0
            head.fc.weight[1, c] = 1.0
        else:
            for t in range(steps):
                head.fc.weight[1, c + t * c] = t + 1.0  # pool_t channel 0, weight t + 1
    model.diagnosis.head = head
    return model


@pytest.mark.parametrize("reduce", [False, True])
def test_gaze_ablation_of_a_crafted_model_is_computed_by_hand(reduce):
    from dermogaze.models import GazeState

    model = crafted_gap_model(reduce)
    x_prime = torch.zeros(1, 2, 2, 2)
    x_prime[0, 0] = 1.0  # GAP(X')[0] = 1
    last = torch.zeros(1, 2, 2, 2)
    last[0, 0] = torch.tensor([[4.0, 0.0], [0.0, 8.0]])  # GAP(X̃'_2)[0] = 12 / 4 = 3
    pooled = torch.tensor([[[0.5, 9.0], [-1.0, 9.0], [2.0, 9.0]]])  # channel 1 carries no weight
    state = GazeState(x_prime=x_prime, last_attended=last, pooled=pooled)
    # margin = GAP(block input)[0] + 1·0.5 + 2·(−1) + 3·2 (the reduction's ReLU keeps the positive sum 4.5)
    expected = {
        None: 3 + 0.5 - 2 + 6,
        0: 3 - 2 + 6,  # pool 0 zeroed
        1: 3 + 0.5 + 6,  # pool 1 zeroed
        2: 1 + 0.5 - 2,  # pool 2 zeroed, blocks 4-5 read X' instead of X̃'_2
    }
    if reduce:
        expected[2] = 1 + max(0.5 - 2, 0.0)  # the reduction's ReLU cuts the negative sum
    with torch.no_grad():
        for removed, margin in expected.items():
            keep = None if removed is None else torch.arange(3) != removed
            p = model.diagnose(state, keep)
            torch.testing.assert_close(p, torch.sigmoid(torch.tensor([margin])), rtol=0, atol=1e-6)
        torch.testing.assert_close(
            model.diagnose(state, torch.zeros(3, dtype=torch.bool)), torch.sigmoid(torch.tensor([1.0]))
        )


def test_cpu_bf16_autocast_keeps_the_first_two_encoder_blocks_in_float32():
    """Under the CPU's bf16 autocast, blocks 1-2 compute exactly what float32 computes; block 3 runs in bf16."""
    from dermogaze.models.encoder import CPU_FLOAT32_BLOCKS, VGGEncoder

    torch.manual_seed(0)
    encoder = VGGEncoder(width=0.25).eval()
    outputs: list[torch.dtype] = []
    for m in encoder:
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda mod, args, out: outputs.append(out.dtype))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, ref_skips = encoder(x)
        outputs.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, skips = encoder(x)
    assert CPU_FLOAT32_BLOCKS == 2
    assert outputs == [torch.float32] * 4 + [torch.bfloat16] * 3  # VGG blocks 1-2: 2 + 2 convs; block 3: 3
    for block in range(2):  # pool1, pool2: bit for bit the float32 maps
        assert skips[block].dtype == torch.float32 and torch.equal(skips[block], ref_skips[block])
    assert low.dtype == torch.bfloat16 and not torch.equal(low.float(), ref)  # block 3 did run in bf16
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)
