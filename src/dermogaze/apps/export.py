"""ONNX export of a trained gaze network (``dermogaze export``), for inference without PyTorch.

The exported graph takes one input and returns the outputs of :class:`~dermogaze.models.GazeOutput`
the variant has, by name::

    images                (B, 3, S, S) float32   RGB, normalised: (x / 255 - mean) / std (``mean``/``std`` below)
    melanoma_probability  (B,)                   P(melanoma) after the checkpoint's temperature scaling
                                                 (``GazeOutput.calibrated_melanoma_prob``): the probability
                                                 ``dermogaze explain`` reports and ``threshold`` applies to
    logits                (B, 2)                 diagnosis logits (index 1 = melanoma), before calibration
    attention             (B, T, S/8, S/8)       A_t (Eq. 2), each map sums to one   (attentive variants)
    masks                 (B, T, S, S)           M_t after the sigmoid                (decoder variants)
    structure_logits      (B, T, K)              pred_t before the softmax, K = len(structures)  (decoder variants)

``B`` is dynamic (the axis is named ``batch``); ``S`` and ``T`` are the checkpoint's. The model's
``metadata_props`` hold, each as a JSON value: ``dermogaze_version``, ``variant``, ``epoch``,
``image_size`` (``S``), ``steps`` (``T``), ``mean`` and ``std`` (the training split's normalisation),
``structures`` (the names of the ``K`` structure classes, in index order, from the checkpoint),
``temperature``, ``threshold`` and ``threshold_rule`` (the checkpoint's calibration), ``input`` and
``outputs`` (the names above).

Decisions:

* The exporter is ``torch.onnx.export(dynamo=True)`` (``torch.export`` and onnxscript, PyTorch's
  default since 2.9; the TorchScript exporter is deprecated). It proves the batch axis symbolic
  while tracing, rather than trusting a trace at one size.
* The structure decoder is exported in its plain formulation (nearest ×2 upsampling, then each
  block's layers: :meth:`~dermogaze.models.decoder.DecoderBlock.forward` with ``fused=False``),
  switched for the export only (:func:`plain_decoder`). The fused path computes the same function
  up to float rounding (``tests/models/test_models_decoder.py`` checks it); its eval form would put an
  einsum of the weights and a transposed convolution in the graph, the plain one is a standard
  Resize and convolutions, the paper's Fig. 3 as read in a graph viewer. (The fused path's custom
  autograd function and private aten ops only run in training.)
* Every export is verified before it is written: the graph runs in onnxruntime on a random
  batch of two and on one of its images alone (a batch size it was not traced with), and its
  outputs are compared with PyTorch's (the model as loaded, fused decoder included); a P(melanoma)
  further than :data:`PROBABILITY_TOLERANCE` away, or another output outside
  ``rtol = atol =`` :data:`OUTPUT_TOLERANCE`, is refused and nothing is written.
* The file is written through :func:`dermogaze.files.atomic_write`: an interrupted export never leaves
  a truncated ``model.onnx``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import DermogazeError
from ..files import atomic_write
from ..models import GazeNet
from ..training.checkpoint import load_checkpoint, model_from_checkpoint
from ..version import __version__

logger = logging.getLogger(__name__)

#: Name of the graph's input and of its dynamic batch axis.
INPUT_NAME = "images"
BATCH_AXIS = "batch"
#: Largest difference between onnxruntime's and PyTorch's P(melanoma) an export may have.
PROBABILITY_TOLERANCE = 1e-4
#: Relative and absolute tolerance of the other outputs in the export's check.
OUTPUT_TOLERANCE = 1e-3
#: Batch size of the example input the graph is traced and checked with (not 1: torch.export
#: specialises a dimension traced at size 1).
EXAMPLE_BATCH = 2
#: Loggers of the exporter's passes (quieted during an export).
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")
EXTRA_HINT = "install the export extra: pip install 'dermogaze[export]'"


class ExportedGazeNet(nn.Module):
    """A :class:`GazeNet` whose forward returns a tuple of tensors, in :attr:`output_names` order.

    ``torch.onnx.export`` needs tensors out, not a :class:`~dermogaze.models.GazeOutput`.

    Args:
        model: the network (eval mode).
        temperature: the checkpoint's temperature, folded into ``melanoma_probability``.
    """

    def __init__(self, model: GazeNet, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)
        self.output_names: tuple[str, ...] = ("melanoma_probability", "logits")
        if model.attention is not None:
            self.output_names += ("attention",)
        if model.decoder is not None:
            self.output_names += ("masks", "structure_logits")

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        values = {
            "melanoma_probability": out.calibrated_melanoma_prob(self.temperature),  # (B,)
            "logits": out.logits,  # (B, 2)
            "attention": out.attention,  # (B, T, h, w)
            "masks": out.masks,  # (B, T, S, S)
            "structure_logits": out.structure_logits,  # (B, T, K)
        }
        return tuple(values[name] for name in self.output_names)


@contextlib.contextmanager
def plain_decoder(model: GazeNet) -> Iterator[GazeNet]:
    """Run the structure decoder's blocks in their plain formulation inside the block, then restore them."""
    blocks = list(model.decoder.blocks) if model.decoder is not None else []
    fused = [block.fused for block in blocks]
    try:
        for block in blocks:
            block.fused = False
        yield model
    finally:
        for block, was in zip(blocks, fused, strict=True):
            block.fused = was


def onnx_metadata(ckpt: Mapping[str, Any], model: GazeNet, output_names: tuple[str, ...]) -> dict[str, str]:
    """The ``metadata_props`` of an export of ``ckpt`` (see the module docstring), each value JSON."""
    calibration = ckpt["calibration"]
    values = {
        "dermogaze_version": __version__,
        "variant": model.variant,
        "epoch": int(ckpt["epoch"]),
        "image_size": int(ckpt["image_size"]),
        "steps": int(model.steps),
        "mean": [float(v) for v in ckpt["mean"]],
        "std": [float(v) for v in ckpt["std"]],
        "structures": [str(s) for s in ckpt["structures"]],
        "temperature": float(calibration["temperature"]),
        "threshold": float(calibration["threshold"]),
        "threshold_rule": str(calibration["threshold_rule"]),
        "input": INPUT_NAME,
        "outputs": list(output_names),
    }
    return {key: json.dumps(value) for key, value in values.items()}


def _require_onnx() -> None:
    """Refuse in one line when the export's packages are missing."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise DermogazeError(f"dermogaze export needs {', '.join(missing)}: {EXTRA_HINT}")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporter's graph passes, which log every rewrite at INFO, to warnings and errors."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _to_onnx(wrapper: ExportedGazeNet, example: Tensor, source: str) -> Any:
    """Trace ``wrapper`` with a dynamic batch axis and return the ``onnx.ModelProto``."""
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=list(wrapper.output_names),
                dynamic_shapes=({0: batch},), verbose=False,
            )
    except Exception as exc:  # the exporter raises many types (torch._dynamo, onnxscript, ...)
        first = str(exc).strip().splitlines()
        raise DermogazeError(
            f"cannot export the model of {source} to ONNX: {type(exc).__name__}: {first[0] if first else ''}"
        ) from None
    return program.model_proto


def _check_against_torch(
    data: bytes, wrapper: ExportedGazeNet, example: Tensor, source: str
) -> dict[str, float]:
    """Run the serialised graph in onnxruntime and compare every output with PyTorch's, on ``example`` and on
    its first image alone (another batch size than the traced one).

    Returns:
        The largest absolute difference per output.

    Raises:
        DermogazeError: an output outside the tolerances (see the module docstring).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    diffs = dict.fromkeys(wrapper.output_names, 0.0)
    for images in (example, example[:1]):
        got = session.run(list(wrapper.output_names), {INPUT_NAME: images.numpy()})
        with torch.no_grad():
            expected = [t.numpy() for t in wrapper(images)]
        for name, a, b in zip(wrapper.output_names, got, expected, strict=True):
            if a.shape != b.shape:
                raise DermogazeError(
                    f"ONNX export of {source}: output {name} has shape {a.shape}, PyTorch's {b.shape}; nothing written"
                )
            diffs[name] = max(diffs[name], float(np.abs(a - b).max()))
            ok = (
                diffs[name] <= PROBABILITY_TOLERANCE
                if name == "melanoma_probability"
                else np.allclose(a, b, rtol=OUTPUT_TOLERANCE, atol=OUTPUT_TOLERANCE)
            )
            if not ok:
                raise DermogazeError(
                    f"ONNX export of {source}: output {name} differs from PyTorch's by up to {diffs[name]:.3g} "
                    "in onnxruntime; nothing written"
                )
    return diffs


def export_onnx(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """Export the network of a checkpoint to an ONNX file, verified against PyTorch (module docstring).

    Args:
        checkpoint: ``RUN/best.pt``.
        out: the ``.onnx`` file to write (replaced atomically if it exists).

    Returns:
        ``{"path", "outputs", "metadata" (decoded), "max_abs_diff" (per output, onnxruntime vs PyTorch)}``.

    Raises:
        DermogazeError: missing export packages, an unreadable checkpoint, a checkpoint whose
            structure names do not match its model, a failed export or check.
    """
    _require_onnx()
    ckpt = load_checkpoint(checkpoint)
    source = str(checkpoint)
    model = model_from_checkpoint(ckpt)
    size = int(ckpt["image_size"])
    wrapper = ExportedGazeNet(model, temperature=float(ckpt["calibration"]["temperature"])).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(EXAMPLE_BATCH, 3, size, size, generator=generator)  # (B, 3, S, S), normalised scale
    if model.decoder is not None:
        classes = model.decoder.classifier.fc2.out_features  # K of structure_logits
        if classes != len(ckpt["structures"]):
            raise DermogazeError(
                f"checkpoint {source} names {len(ckpt['structures'])} structures but its model predicts {classes}"
            )
    logger.info("exporting %s (%s, T=%d, %d px) to ONNX", source, model.variant, model.steps, size)
    with plain_decoder(model):
        proto = _to_onnx(wrapper, example, source)
    metadata = onnx_metadata(ckpt, model, wrapper.output_names)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"dermogaze {model.variant} (T={model.steps}, {size} px) from {Path(source).name}: input {INPUT_NAME} "
        f"(batch, 3, {size}, {size}) normalised with metadata mean/std; outputs {', '.join(wrapper.output_names)}"
    )
    data = proto.SerializeToString()
    diffs = _check_against_torch(data, wrapper, example, source)
    with atomic_write(out, "wb") as fh:
        fh.write(data)
    logger.info("wrote %s (%.1f MB)", out, len(data) / 1e6)
    return {
        "path": Path(out),
        "outputs": wrapper.output_names,
        "metadata": {key: json.loads(value) for key, value in metadata.items()},
        "max_abs_diff": diffs,
    }
