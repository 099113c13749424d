"""The device and precision chosen once (dermogaze.runtime): which precision runs for --amp on which device, the
detection of native bf16 on the CPU, and the one log line of a CPU that falls back to float32."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
import torch.nn.functional as F

from dermogaze import runtime
from dermogaze.errors import DermogazeError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


@pytest.fixture
def native(monkeypatch):
    """Set what the CPU's bf16 detection answers; the once-per-process log lines are forgotten."""
    runtime._say_once.cache_clear()

    def set_native(value: bool) -> None:
        monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: value)

    yield set_native
    runtime._say_once.cache_clear()


def _conv_dtype(factory: runtime.Autocast) -> torch.dtype:
    """The dtype of a convolution's output inside the context ``factory`` makes."""
    with factory():
        return F.conv2d(torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3)).dtype


def test_cpu_with_native_bf16_autocasts_in_bf16(native, monkeypatch):
    native(True)
    assert runtime.effective_amp(CPU, "bf16") == "bf16"
    assert _conv_dtype(runtime.autocast_factory(CPU, "bf16")) == torch.bfloat16
    # by default (benchmarks/results/bf16_parity.md): the viewer in bf16, the demo (which trains) in float32
    assert runtime.default_amp(CPU, "serve") == "bf16"
    assert runtime.default_amp(CPU, "demo") == "off"
    monkeypatch.setitem(runtime.CPU_BF16_BY_DEFAULT, "demo", True)  # were training kept, the demo would follow
    assert runtime.default_amp(CPU, "demo") == "bf16"


def test_cpu_without_native_bf16_runs_float32_and_says_why_once(native, caplog):
    native(False)
    with caplog.at_level(logging.INFO, logger="dermogaze.runtime"):
        modes = [runtime.effective_amp(CPU, "bf16") for _ in range(3)]
        factory = runtime.autocast_factory(CPU, "bf16")
    assert modes == ["off"] * 3
    assert factory is contextlib.nullcontext and _conv_dtype(factory) == torch.float32
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines  # one line per process, however often bf16 is asked for
    assert "no native bfloat16" in lines[0] and "float32" in lines[0]
    assert runtime.default_amp(CPU, "serve") == runtime.default_amp(CPU, "demo") == "off"  # not a request: no line
    assert len(caplog.records) == 1


def test_fp16_on_the_cpu_runs_float32_even_with_native_bf16(native, caplog):
    native(True)
    with caplog.at_level(logging.INFO, logger="dermogaze.runtime"):
        assert runtime.effective_amp(CPU, "fp16") == "off"
        assert runtime.autocast_factory(CPU, "fp16") is contextlib.nullcontext
    assert len(caplog.records) == 1 and "fp16" in caplog.records[0].getMessage()


@pytest.mark.parametrize("is_native", [True, False])
def test_cuda_precision_is_what_was_asked_whatever_the_cpu(native, is_native, monkeypatch):
    native(is_native)
    monkeypatch.setattr(runtime, "CPU_BF16_BY_DEFAULT", {"demo": True, "serve": True})
    assert [runtime.effective_amp(CUDA, amp) for amp in runtime.AMP_MODES] == list(runtime.AMP_MODES)
    assert runtime.default_amp(CUDA, "demo") == runtime.default_amp(CUDA, "serve") == "off"  # a GPU: as before


def test_forced_cpu_autocast_and_unknown_modes(native):
    native(False)
    assert _conv_dtype(runtime.autocast_factory(CPU, "bf16", cpu=True)) == torch.bfloat16  # what benchmarks measure
    assert runtime.autocast_factory(CPU, "off", cpu=True) is contextlib.nullcontext
    with pytest.raises(DermogazeError, match="fp8"):
        runtime.autocast_factory(CPU, "fp8")


def test_precision_names():
    assert [runtime.precision_name(m) for m in ("off", "bf16", "fp16")] == ["float32", "bf16 autocast",
                                                                           "fp16 autocast"]


@pytest.mark.parametrize(
    "onednn, avx512_bf16, amx, expected",
    [(True, True, False, True), (True, False, True, True), (True, False, False, False), (False, True, True, False)],
)
def test_native_bf16_needs_onednn_bf16_and_the_cpu_instructions(monkeypatch, onednn, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    runtime.native_cpu_bf16.cache_clear()
    try:
        assert runtime.native_cpu_bf16() is expected
    finally:
        runtime.native_cpu_bf16.cache_clear()


def test_native_bf16_is_false_without_the_probes(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    runtime.native_cpu_bf16.cache_clear()
    try:
        assert runtime.native_cpu_bf16() is False
    finally:
        runtime.native_cpu_bf16.cache_clear()
