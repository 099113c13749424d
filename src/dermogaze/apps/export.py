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
``outputs`` (the names above), and ``quantization``: ``null`` for a float32 graph; for an int8 one an
object with ``method`` (``static``), ``format`` (``QDQ``), ``weights``, ``activations``, ``operators``,
``plan`` and ``quantized`` (which layers, :data:`INT8_PLANS`), ``float_parameters`` (the weights whose
layers stayed float), ``calibration_images`` and ``calibration_set``, ``check_images`` and ``check_set``,
``threshold``, ``parity`` (the figures of the check below), ``tolerance`` (:data:`INT8_TOLERANCE`) and
``rejected_plans`` (each plan tried first, with its figures and the criteria it missed).

int8 (``quantize="int8"``, ``dermogaze export --quantize int8``):

* Static quantization with onnxruntime's tools (``onnxruntime.quantization.quantize_static``), in the QDQ
  format (QuantizeLinear/DequantizeLinear pairs around float operators, which onnxruntime fuses into
  integer kernels): weights int8 per output channel in a 7-bit range (``reduce_range``: the 16-bit
  intermediate sums of x86 CPUs without VNNI cannot overflow, so the check made on one machine holds on
  another), activations uint8 per tensor, their ranges from a MinMax calibration on
  :data:`CALIBRATION_IMAGES` training images of a cache (evenly spaced over the train split, prepared
  like the evaluation's inputs). Static, not dynamic: onnxruntime's dynamic quantization of a
  convolution (``ConvInteger``, the activations quantized again at every call) ran several times slower
  than the float32 graph on the CPU, and missed the tolerances too (``benchmarks/results/export_int8.md``).
* Only convolutions and dense layers are quantized (:data:`INT8_OPERATORS`); the softmax of Eq. 2, the
  gates' sigmoid and tanh (Eqs. 4-9) and the products stay float. Four layers compute logits that a
  softmax, a sigmoid or an arg-max reads, and stay float in every plan (:func:`int8_float_parameters`):
  ``V_a`` (``Z_t``, Eq. 1), the decoder's last convolution (``M_t``), the structure classifier's last
  dense layer (``pred_t``) and the diagnosis branch's last one (the logits): an int8 output moves in steps
  of its range / 255, which shifts P(melanoma) and ties the structure logits.
* Plans, tried in order (:data:`INT8_PLANS`): ``full`` quantizes every other convolution and dense layer;
  ``decoder`` only those of the structure decoder, so that P(melanoma) and the attention are computed in
  float and only the masks and the structure names are int8. The diagnosis of a small network can be too
  sensitive for 8-bit activations in the encoder and the attentive ConvLSTM (each alone moved the demo
  model's P(melanoma) by more than the tolerance), while quantizing the decoder, the most costly part (it
  runs once per gaze, up to full resolution), leaves P(melanoma) as it is. A variant without the decoder
  has the ``full`` plan only.
* Each plan's graph is checked against the float graph (itself checked against PyTorch, above) in
  onnxruntime, on every validation and test image of the cache (``data``), or without a cache on
  :data:`RANDOM_CHECK_IMAGES` seeded random inputs (then the calibration is on random inputs too, and the
  figures say little about real images: the metadata and the command's output say which). The first plan
  that meets :data:`INT8_TOLERANCE`, the criteria of the bf16 parity (P(melanoma) within 0.01 on every
  image, the same decision at the checkpoint's threshold on at least 99% of them, the same named structure
  at at least 98% of the gaze steps), is written; when none does, the export is refused in one line naming
  each plan's missed criteria and figures, and nothing is written (a file already at ``out`` is kept).

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
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.cache import load_info
from ..data.dataset import DermoscopyDataset
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
#: Values of ``export_onnx(quantize=...)`` (``dermogaze export --quantize``).
QUANTIZE_CHOICES = ("int8",)
#: What an int8 export must keep of the float model's results on the check set (the bf16 parity's criteria):
#: ``max_abs_dp``: the largest |P(melanoma) difference| on any image; ``decision_agreement``: the share of images
#: with the same decision at the checkpoint's threshold; ``named_agreement``: the share of gaze steps whose named
#: structure (arg-max of ``structure_logits``) is the same.
INT8_TOLERANCE = {"max_abs_dp": 0.01, "decision_agreement": 0.99, "named_agreement": 0.98}
#: Training images an int8 export is calibrated on by default (evenly spaced over the split).
CALIBRATION_IMAGES = 64
#: Random inputs (seeded) an int8 export is calibrated and checked on when no cache is given.
RANDOM_CHECK_IMAGES = 64
#: Images per onnxruntime call while calibrating and checking an int8 export.
INT8_BATCH = 8
#: Operators whose inputs an int8 export quantizes (the others, softmax, sigmoid and tanh among them, stay float).
INT8_OPERATORS = ("Conv", "Gemm")
#: The int8 plans, tried in this order until one keeps the float model's results (module docstring): which
#: layers each quantizes.
INT8_PLANS = {
    "full": "every convolution and dense layer but the four logit layers",
    "decoder": "the structure decoder only, but its two logit layers",
}


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
        "quantization": None,
    }
    return {key: json.dumps(value) for key, value in values.items()}


def _set_metadata(proto: Any, metadata: Mapping[str, str]) -> None:
    """Replace the ``metadata_props`` of ``proto`` (an ``onnx.ModelProto``) with ``metadata``."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


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


# ----------------------------------------------------------------------------------------------
# int8 (static quantization, checked against the float model)
# ----------------------------------------------------------------------------------------------
def int8_float_parameters(wrapper: ExportedGazeNet, plan: str = "full") -> list[str]:
    """Graph names of the weights of the layers an int8 ``plan`` (:data:`INT8_PLANS`) keeps in float.

    ``full``: the four layers that compute logits; ``decoder``: those and every layer outside the structure
    decoder. The exported graph names each weight after its parameter in ``wrapper``
    (``model.attention.v_a.weight``; a batch norm is folded into its convolution's weight).
    """
    model = wrapper.model
    layers = [[m for m in model.diagnosis.modules() if isinstance(m, nn.Linear)][-1]]  # the diagnosis logits
    if model.attention is not None:
        layers.append(model.attention.v_a)  # Z_t, the logits of the attention softmax (Eqs. 1-2)
    if model.decoder is not None:
        layers.append([m for m in model.decoder.blocks[-1] if isinstance(m, nn.Conv2d)][-1])  # M_t's logits
        layers.append(model.decoder.classifier.fc2)  # pred_t, the structure logits
    if plan == "decoder":
        decoder = set() if model.decoder is None else {id(m) for m in model.decoder.modules()}
        layers += [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear) and id(m) not in decoder
                   and m not in layers]
    elif plan != "full":
        raise ValueError(f"unknown int8 plan {plan!r}: expected one of {', '.join(INT8_PLANS)}")
    names = {id(m): name for name, m in wrapper.named_modules()}
    return [f"{names[id(layer)]}.weight" for layer in layers]


class _Batches:
    """Calibration input for onnxruntime's quantizer (a ``CalibrationDataReader``): ``images`` in batches."""

    def __init__(self, images: np.ndarray):
        self._batches = iter([{INPUT_NAME: images[i : i + INT8_BATCH]} for i in range(0, len(images), INT8_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _cache_images(dataset: DermoscopyDataset, indices: Sequence[int]) -> Iterator[np.ndarray]:
    """``dataset``'s images at ``indices`` as float32 ``(b, 3, S, S)`` batches of at most :data:`INT8_BATCH`."""
    for start in range(0, len(indices), INT8_BATCH):
        yield np.stack([dataset[int(i)]["image"].numpy() for i in indices[start : start + INT8_BATCH]])


def _int8_inputs(
    ckpt: Mapping[str, Any], data: str | Path | None, calibration_images: int
) -> tuple[np.ndarray, Callable[[], Iterator[np.ndarray]], dict[str, Any]]:
    """The calibration images, the check set (a function returning its batches) and their description.

    With a cache: ``calibration_images`` training images, evenly spaced over the split (eval transform, the
    checkpoint's mean/std), and every validation and test image. Without one: seeded random inputs for both.
    """
    size = int(ckpt["image_size"])
    if data is None:
        generator = torch.Generator().manual_seed(1)
        calibration = torch.randn(calibration_images, 3, size, size, generator=generator).numpy()
        check = torch.randn(RANDOM_CHECK_IMAGES, 3, size, size, generator=generator).numpy()

        def random_batches() -> Iterator[np.ndarray]:
            return iter([check[i : i + INT8_BATCH] for i in range(0, len(check), INT8_BATCH)])

        sets = {"calibration_set": "seeded random normal inputs", "check_set": "seeded random normal inputs"}
        return calibration, random_batches, {**sets, "check_images": len(check)}
    info = load_info(data)
    name = Path(data).name
    check_splits = [split for split in ("val", "test") if split in info["splits"]]
    if "train" not in info["splits"] or not check_splits:
        raise DermogazeError(f"{data}: an int8 export calibrates on the cache's train split and checks on its val "
                             f"and test splits; this cache has {', '.join(info['splits'])}")
    normalisation = (ckpt["mean"], ckpt["std"])
    train, *checks = (DermoscopyDataset(data, split, image_size=size, normalisation=normalisation)
                      for split in ("train", *check_splits))
    count = min(calibration_images, len(train))
    indices = np.unique(np.linspace(0, len(train) - 1, count).round().astype(int))
    calibration = np.concatenate(list(_cache_images(train, indices)))

    def cache_batches() -> Iterator[np.ndarray]:
        for dataset in checks:
            yield from _cache_images(dataset, range(len(dataset)))

    return calibration, cache_batches, {
        "calibration_set": f"train split of {name}",
        "check_set": f"{' and '.join(check_splits)} splits of {name}",
        "check_images": sum(len(ds) for ds in checks),
    }


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop the quantizer's advice to pre-process the model (logged on the root logger at every call)."""

    def advice(record: logging.LogRecord) -> bool:
        return not (record.levelno < logging.ERROR and "onnxruntime" in record.pathname)

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantize_int8(float_model: bytes, calibration: np.ndarray, float_parameters: Sequence[str]) -> Any:
    """Static int8 quantization of a serialised float graph (module docstring), unchecked.

    Args:
        float_model: the float32 graph of :func:`export_onnx`.
        calibration: float32 ``(N, 3, S, S)`` normalised inputs the activation ranges are measured on.
        float_parameters: weights (graph names, :func:`int8_float_parameters`) whose layers stay float.

    Returns:
        The quantized ``onnx.ModelProto`` (metadata as in ``float_model``).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = onnx.load_from_string(float_model)
    keep = set(float_parameters)
    excluded = [node.name for node in proto.graph.node if len(node.input) > 1 and node.input[1] in keep]
    with tempfile.TemporaryDirectory(prefix="dermogaze-int8-") as tmp, _quiet_quantizer():
        path = Path(tmp) / "int8.onnx"
        quantize_static(
            proto, path, _Batches(calibration), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(INT8_OPERATORS),
            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
        )
        return onnx.load(str(path))


def int8_parity(
    p_float: np.ndarray,
    p_int8: np.ndarray,
    named_float: np.ndarray | None,
    named_int8: np.ndarray | None,
    threshold: float,
) -> dict[str, float | None]:
    """The int8 model's results against the float model's, in the terms of :data:`INT8_TOLERANCE`.

    Args:
        p_float, p_int8: P(melanoma) ``(N,)`` of each model.
        named_float, named_int8: the index of the named structure ``(N, T)`` (arg-max of ``structure_logits``),
            or ``None`` for a variant without the structure decoder.
        threshold: an image is melanoma when ``P >= threshold``.

    Returns:
        ``{"max_abs_dp", "decision_agreement", "named_agreement" (None without a decoder)}``.
    """
    named = None if named_float is None else float(np.mean(named_float == named_int8))
    return {
        "max_abs_dp": float(np.abs(p_int8.astype(np.float64) - p_float).max()),
        "decision_agreement": float(np.mean((p_float >= threshold) == (p_int8 >= threshold))),
        "named_agreement": named,
    }


def int8_failures(parity: Mapping[str, float | None]) -> list[str]:
    """The criteria of :data:`INT8_TOLERANCE` that ``parity`` (:func:`int8_parity`) misses, each with its figure
    (a NaN misses its criterion)."""
    failures = []
    if not parity["max_abs_dp"] <= INT8_TOLERANCE["max_abs_dp"]:
        failures.append(f"P(melanoma) differs by up to {parity['max_abs_dp']:.4f} "
                        f"(at most {INT8_TOLERANCE['max_abs_dp']} allowed)")
    if not parity["decision_agreement"] >= INT8_TOLERANCE["decision_agreement"]:
        failures.append(f"the same decision on {parity['decision_agreement']:.1%} of the images "
                        f"(at least {INT8_TOLERANCE['decision_agreement']:.0%} needed)")
    if parity["named_agreement"] is not None and not parity["named_agreement"] >= INT8_TOLERANCE["named_agreement"]:
        failures.append(f"the same named structure at {parity['named_agreement']:.1%} of the gaze steps "
                        f"(at least {INT8_TOLERANCE['named_agreement']:.0%} needed)")
    return failures


def _named_outputs(model: bytes, batches: Iterator[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """P(melanoma) ``(N,)`` and the named structures ``(N, T)`` (``None`` without a decoder) of a serialised graph
    run in onnxruntime on every batch."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs() if o.name in ("melanoma_probability", "structure_logits")]
    probabilities, named = [], []
    for images in batches:
        outputs = session.run(names, {INPUT_NAME: images})
        probabilities.append(outputs[0])  # (b,)
        if len(outputs) > 1:
            named.append(outputs[1].argmax(axis=-1))  # (b, T)
    return np.concatenate(probabilities), np.concatenate(named) if named else None


def _export_int8(
    float_model: bytes, wrapper: ExportedGazeNet, ckpt: Mapping[str, Any], data: str | Path | None,
    calibration_images: int, source: str,
) -> tuple[Any, dict[str, Any]]:
    """Quantize ``float_model`` with the first plan of :data:`INT8_PLANS` whose result keeps the float model's on the
    check set (:data:`INT8_TOLERANCE`).

    Returns:
        The quantized ``onnx.ModelProto`` and its ``quantization`` metadata (module docstring).

    Raises:
        DermogazeError: a bad cache, or every plan outside :data:`INT8_TOLERANCE` (each plan's missed criteria
            named with their figures).
    """
    calibration, check_batches, sets = _int8_inputs(ckpt, data, calibration_images)
    threshold = float(ckpt["calibration"]["threshold"])
    logger.info("int8: calibrating on %d inputs (%s), checking on %d (%s)", len(calibration),
                sets["calibration_set"], sets["check_images"], sets["check_set"])
    p_float, named_float = _named_outputs(float_model, check_batches())
    rejected = []
    plans = {plan: what for plan, what in INT8_PLANS.items() if plan != "decoder" or wrapper.model.decoder is not None}
    for plan, what in plans.items():
        float_parameters = int8_float_parameters(wrapper, plan)
        proto = quantize_int8(float_model, calibration, float_parameters)
        p_int8, named_int8 = _named_outputs(proto.SerializeToString(), check_batches())
        parity = int8_parity(p_float, p_int8, named_float, named_int8, threshold)
        failures = int8_failures(parity)
        if not failures:
            break
        logger.info("int8 plan %s (%s) refused: %s", plan, what, "; ".join(failures))
        rejected.append({"plan": plan, "parity": parity, "failures": failures})
    else:
        reasons = "; ".join(f"quantizing {INT8_PLANS[r['plan']]}: {', '.join(r['failures'])}" for r in rejected)
        raise DermogazeError(
            f"int8 export of {source} refused: against the float model on {sets['check_images']} inputs "
            f"({sets['check_set']}), {reasons}; nothing written"
        )
    return proto, {
        "method": "static",
        "format": "QDQ",
        "weights": "int8, per output channel, 7-bit range",
        "activations": "uint8, per tensor, MinMax calibration",
        "operators": list(INT8_OPERATORS),
        "plan": plan,
        "quantized": what,
        "float_parameters": float_parameters,
        "calibration_images": len(calibration),
        **sets,
        "threshold": threshold,
        "parity": parity,
        "tolerance": dict(INT8_TOLERANCE),
        "rejected_plans": rejected,
    }


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    quantize: str | None = None,
    data: str | Path | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
) -> dict[str, Any]:
    """Export the network of a checkpoint to an ONNX file, verified against PyTorch (module docstring).

    Args:
        checkpoint: ``RUN/best.pt``.
        out: the ``.onnx`` file to write (replaced atomically if it exists).
        quantize: ``None`` (float32) or ``"int8"``: static quantization, checked against the float model.
        data: int8 only: a prepared cache to calibrate on (train split) and check on (val and test splits);
            ``None``: seeded random inputs for both.
        calibration_images: int8 only: how many training images to calibrate on.

    Returns:
        ``{"path", "outputs", "metadata" (decoded), "max_abs_diff" (per output, onnxruntime vs PyTorch),
        "bytes"}``; with int8, ``metadata["quantization"]`` holds the method, the sets and the parity figures,
        and ``"float_bytes"`` the size of the float graph.

    Raises:
        DermogazeError: missing export packages, an unreadable checkpoint or cache, a checkpoint whose
            structure names do not match its model, a failed export or check, an int8 model outside
            :data:`INT8_TOLERANCE`. Nothing is written then.
    """
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise DermogazeError(f"unknown quantization {quantize!r}: expected one of {', '.join(QUANTIZE_CHOICES)}")
    if calibration_images < 1:
        raise DermogazeError(f"calibration_images must be at least 1, got {calibration_images}")
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
    _set_metadata(proto, metadata)
    proto.doc_string = (
        f"dermogaze {model.variant} (T={model.steps}, {size} px) from {Path(source).name}: input {INPUT_NAME} "
        f"(batch, 3, {size}, {size}) normalised with metadata mean/std; outputs {', '.join(wrapper.output_names)}"
    )
    float_model = proto.SerializeToString()
    diffs = _check_against_torch(float_model, wrapper, example, source)
    serialized = float_model
    if quantize == "int8":
        quantized, quantization = _export_int8(float_model, wrapper, ckpt, data, calibration_images, source)
        metadata["quantization"] = json.dumps(quantization)
        _set_metadata(quantized, metadata)
        quantized.doc_string = proto.doc_string + "; int8 (static QDQ), checked against the float model"
        serialized = quantized.SerializeToString()
    with atomic_write(out, "wb") as fh:
        fh.write(serialized)
    logger.info("wrote %s (%.1f MB)", out, len(serialized) / 1e6)
    return {
        "path": Path(out),
        "outputs": wrapper.output_names,
        "metadata": {key: json.loads(value) for key, value in metadata.items()},
        "max_abs_diff": diffs,
        "bytes": len(serialized),
        "float_bytes": len(float_model),
    }
