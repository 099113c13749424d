"""VGG weights (torchvision layout, ImageNet cache, local files), the paper configuration and its size."""

import urllib.error

import pytest
import torch
from torch import nn
from torchvision.models import vgg16_bn

from conftest import randomise_batch_norm
from dermogaze import cli
from dermogaze.errors import DermogazeError
from dermogaze.models import build_model, encoder
from dermogaze.models.diagnosis import DiagnosisBranch
from dermogaze.models.encoder import VGGEncoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def torchvision_vgg():
    torch.manual_seed(0)
    model = vgg16_bn(weights=None).eval()
    randomise_batch_norm(model)  # non-trivial BN statistics, so that loading them is actually tested
    return model


@pytest.fixture(scope="module")
def features_file(torchvision_vgg, tmp_path_factory):
    """A local state-dict file: the features part of a torchvision vgg16_bn state dict."""
    path = tmp_path_factory.mktemp("weights") / "vgg16_bn_features.pth"
    torch.save({k: v for k, v in torchvision_vgg.state_dict().items() if k.startswith("features.")}, path)
    return path


def test_torchvision_state_dict_reproduces_torchvision_features(torchvision_vgg):
    state = torchvision_vgg.state_dict()
    enc = VGGEncoder().eval()
    enc.load_torchvision(state, 0)
    diag = DiagnosisBranch(enc.out_channels, steps=5).eval()
    diag.load_torchvision(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x_prime, skips = enc(x)
        tv = torchvision_vgg.features
        torch.testing.assert_close(x_prime, tv[:24](x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(skips[0], tv[:7](x), atol=1e-5, rtol=1e-5)  # pool1
        torch.testing.assert_close(skips[1], tv[:14](x), atol=1e-5, rtol=1e-5)  # pool2
        torch.testing.assert_close(diag.blocks(x_prime), tv[24:44](x_prime), atol=1e-5, rtol=1e-5)
    assert enc.skip_channels == (64, 128, 256) and enc.out_channels == 256


def test_vgg_variant_is_torchvision_vgg16_bn(torchvision_vgg):
    """The ``vgg`` variant with torchvision's weights (features and FC layers) computes torchvision's VGG."""
    model = build_model("vgg", image_size=32).eval()
    state = torchvision_vgg.state_dict()
    model.encoder.load_torchvision(state, 0)
    model.diagnosis.load_torchvision(state)
    x = torch.randn(1, 3, 32, 32)  # 1×1 after pool5: the adaptive pool replicates it to 7×7
    with torch.no_grad():
        logits = model(x).logits
        features = torchvision_vgg.features(x)
        pooled = torch.flatten(torchvision_vgg.avgpool(features), 1)
        hidden = torchvision_vgg.classifier[:6](pooled)  # torchvision's own layers up to the new 2-class layer
        expected = model.diagnosis.head.classifier[6](hidden)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_weights_path_loads_a_state_dict(torchvision_vgg, features_file):
    model = build_model("deco_gap_3", image_size=32, steps=2, weights=str(features_file)).eval()
    assert model.init_kwargs["weights"] is None  # the state dict supersedes the file: rebuilding needs no file
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x)[0], torchvision_vgg.features[:24](x), atol=1e-5, rtol=1e-5)
    state = torchvision_vgg.state_dict()
    torch.testing.assert_close(model.diagnosis.blocks[0].weight, state["features.24.weight"])
    torch.testing.assert_close(model.diagnosis.blocks[41 - 24].running_var, state["features.41.running_var"])


def test_imagenet_weights_come_from_the_hub_cache(monkeypatch, tmp_path, features_file):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(dst):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(encoder, "_download_imagenet", offline)
    expected = tmp_path / "checkpoints" / "vgg16_bn-6c64b313.pth"
    with pytest.raises(DermogazeError) as err:
        build_model("vgg_gap", image_size=32, weights="imagenet")
    assert str(expected) in str(err.value) and "download" in str(err.value)
    # Once the file is there, it is used (no download).
    expected.parent.mkdir(parents=True)
    expected.write_bytes(features_file.read_bytes())
    model = build_model("vgg_gap", image_size=32, weights="imagenet")
    cached = torch.load(expected, weights_only=True)
    torch.testing.assert_close(model.encoder[0].weight, cached["features.0.weight"], atol=0, rtol=0)


def test_bad_weights_are_clear_errors(tmp_path, features_file):
    with pytest.raises(DermogazeError, match="does not exist"):
        build_model("vgg_gap", weights=str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DermogazeError, match="garbage.pth"):
        build_model("vgg_gap", weights=str(garbage))
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(DermogazeError, match="not a torchvision vgg16_bn state dict"):
        build_model("vgg_gap", weights=str(other))
    with pytest.raises(DermogazeError, match="width 1"):
        build_model("vgg_gap", width=0.5, weights=str(features_file))


def conv(k, c_in, c_out, bias=True):
    return k * k * c_in * c_out + (c_out if bias else 0)


def bn(c):
    return 2 * c  # weight and bias (running statistics are buffers)


def dense(n_in, n_out):
    return n_in * n_out + n_out


# The paper configuration (deco_gap_3, 224 px, T = 5, width 1), from the layer plan of docs/design.md §4.
C, T = 256, 5
PAPER_ENCODER = (  # VGG-16-BN blocks 1-3
    conv(3, 3, 64) + bn(64) + conv(3, 64, 64) + bn(64)
    + conv(3, 64, 128) + bn(128) + conv(3, 128, 128) + bn(128)
    + conv(3, 128, 256) + bn(256) + 2 * (conv(3, 256, 256) + bn(256))
)
PAPER_ATTENTION = (
    conv(3, C, C) + conv(3, C, C, bias=False) + conv(3, C, 1, bias=False)  # W_a + b_a, U_a, V_a (Eq. 1)
    + 4 * conv(3, C, C) + 4 * conv(3, C, C, bias=False)  # W_i,f,o,g + b_i,f,o,g and U_i,f,o,g (Eqs. 4-7)
)
PAPER_DECODER = (
    2 * (conv(3, 256, 256) + bn(256)) + conv(3, 256, 128) + bn(128)  # block 1 at 56 px
    + conv(3, 128, 128) + bn(128) + conv(3, 128, 64) + bn(64)  # block 2 at 112 px
    + conv(3, 64, 64) + bn(64) + conv(3, 64, 1)  # block 3 at 224 px, last conv bare
)
PAPER_STRUCTURE_CLASSIFIER = dense(256 + 128 + 64, 224) + dense(224, 6)
PAPER_BLOCKS_4_5 = conv(3, 256, 512) + bn(512) + 5 * (conv(3, 512, 512) + bn(512))
PAPER_DIAGNOSIS_TOP = dense(512 + T * C, 2)
PAPER_TOTAL = (
    PAPER_ENCODER + PAPER_ATTENTION + PAPER_DECODER + PAPER_STRUCTURE_CLASSIFIER + PAPER_BLOCKS_4_5
    + PAPER_DIAGNOSIS_TOP
)  # = 22,466,345
# Frozen batch norm: the affine parameters of the VGG parts' BN do not train.
PAPER_FROZEN_BN = bn(64 + 64 + 128 + 128 + 256 * 3) + bn(512 * 6)


def test_paper_configuration_parameter_count_and_layer_plan():
    model = build_model("deco_gap_3", image_size=224, steps=5, width=1.0).eval()
    assert sum(p.numel() for p in model.parameters()) == PAPER_TOTAL
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == PAPER_TOTAL - PAPER_FROZEN_BN
    counts = {k: v[0] for k, v in model.module_parameter_counts().items()}
    assert counts == {
        "encoder (VGG blocks 1-3)": PAPER_ENCODER,
        "attentive ConvLSTM": PAPER_ATTENTION,
        "structure decoder": PAPER_DECODER,
        "structure classifier": PAPER_STRUCTURE_CLASSIFIER,
        "diagnosis VGG blocks 4-5": PAPER_BLOCKS_4_5,
        "diagnosis top": PAPER_DIAGNOSIS_TOP,
    }
    # One forward at 224 px: shapes, and each decoder conv's (channels in, channels out, resolution);
    # a block works at twice the size of its input (×2 upsampling first).
    plan = []

    def record(block, inputs, output):
        assert output.shape[-1] == 2 * inputs[0].shape[-1]
        plan.extend((m.in_channels, m.out_channels, output.shape[-1]) for m in block if isinstance(m, nn.Conv2d))

    hooks = [block.register_forward_hook(record) for block in model.decoder.blocks]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert plan == [(256, 256, 56), (256, 256, 56), (256, 128, 56), (128, 128, 112), (128, 64, 112),
                    (64, 64, 224), (64, 1, 224)]
    assert out.attention.shape == (1, 5, 28, 28) and out.masks.shape == (1, 5, 224, 224)
    assert out.structure_logits.shape == (1, 5, 6) and out.logits.shape == (1, 2)


def test_model_summary_command_prints_the_counts(capsys):
    model = build_model("deco_gap_3")
    counts = model.module_parameter_counts()  # the parts cover the whole model
    assert sum(t for t, _ in counts.values()) == sum(p.numel() for p in model.parameters())
    assert cli.main(["model", "summary", "deco_gap_3"]) == 0
    text = capsys.readouterr().out
    assert f"{PAPER_TOTAL:,}" in text and f"{PAPER_TOTAL - PAPER_FROZEN_BN:,}" in text
    assert f"{PAPER_ATTENTION:,}" in text and f"{PAPER_DECODER:,}" in text
    assert cli.main(["model", "list"]) == 0
    assert capsys.readouterr().out.split() == ["vgg", "vgg_gap", "vgg_attconvlstm", "vgg_attconvlstm_gap",
                                               "deco_gap_3", "deco_gap_5", "deco_gap_17"]
    assert cli.main(["model", "summary", "deco_gap_5", "--width", "0.125", "--image-size", "32",
                     "--freeze-encoder"]) == 0
    assert "encoder frozen" in capsys.readouterr().out
    assert cli.main(["model", "summary", "deco_gap_3", "--image-size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
