"""``dermogaze export | serve | predict``: a checkpoint's network as an ONNX file, the gaze viewer in the browser,
and challenge submission files (ISIC 2018 Task 2 masks, ISIC 2017 Part 3 CSV)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import (
    add_amp_argument,
    add_device_argument,
    add_runtime_arguments,
    batch_size_int,
    check_output_file,
    check_output_folder,
    int_in,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# export (ONNX)
# ----------------------------------------------------------------------------------------------
def _cmd_export(args: argparse.Namespace) -> int:
    from ..apps.export import CALIBRATION_IMAGES, export_onnx
    from ..errors import DermogazeError

    if args.quantize is None and (args.data is not None or args.calibration_images is not None):
        raise DermogazeError("--data and --calibration-images calibrate and check an int8 export: add --quantize int8")
    result = export_onnx(
        args.checkpoint, check_output_file(args.out), quantize=args.quantize, data=args.data,
        calibration_images=args.calibration_images or CALIBRATION_IMAGES,
    )
    meta = result["metadata"]
    diffs = ", ".join(f"{name} {diff:.1e}" for name, diff in result["max_abs_diff"].items())
    print(f"exported {meta['variant']} (T={meta['steps']}, input images (batch, 3, {meta['image_size']}, "
          f"{meta['image_size']}) normalised with the metadata's mean/std) to {result['path']}")
    print(f"outputs: {', '.join(result['outputs'])}; checked in onnxruntime, max |ONNX - PyTorch|: {diffs}")
    if (q := meta["quantization"]) is not None:
        parity = q["parity"]
        named = "" if parity["named_agreement"] is None else (
            f", the same named structure at {parity['named_agreement']:.1%} of the gaze steps")
        for rejected in q["rejected_plans"]:
            print(f"int8 plan {rejected['plan']} not kept: {'; '.join(rejected['failures'])}")
        print(f"int8 plan {q['plan']} ({q['quantized']}; {result['bytes'] / 1e6:.1f} MB, float "
              f"{result['float_bytes'] / 1e6:.1f} MB), calibrated on {q['calibration_images']} inputs "
              f"({q['calibration_set']}); against the float model on {q['check_images']} inputs ({q['check_set']}): "
              f"P(melanoma) within {parity['max_abs_dp']:.4f}, the same decision on {parity['decision_agreement']:.1%} "
              f"of the images{named}")
    return 0


def add_export(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``export`` to ``sub``."""
    p = sub.add_parser(
        "export",
        help=help_line,
        description="Export the network of a checkpoint to an ONNX file: input 'images' (batch, 3, S, S), "
        "normalised; outputs melanoma_probability (calibrated), logits, and as the variant has them attention, "
        "masks and structure_logits. The batch size is dynamic, T and S are the checkpoint's. The metadata holds "
        "mean, std, structures, image_size, steps, temperature and threshold. The file is checked in onnxruntime "
        "against PyTorch before it is written. Needs the export extra: pip install 'dermogaze[export]'.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PT", help="checkpoint written by 'dermogaze train' "
                   "(RUN/best.pt)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write, e.g. model.onnx")
    p.add_argument("--quantize", choices=("int8",), help="int8: static quantization (onnxruntime) of every layer "
                   "but the logit layers, else of the structure decoder only, written only if it keeps the float "
                   "model's results: P(melanoma) within 0.01 on every checked image, the same decision on >= 99%% of "
                   "them, the same named structure at >= 98%% of the gaze steps")
    p.add_argument("--data", metavar="CACHE", help="with --quantize: prepared cache whose train split calibrates "
                   "and whose val and test splits check the int8 model (default: seeded random inputs)")
    p.add_argument("--calibration-images", type=int_in(1), metavar="N",
                   help="with --quantize: training images to calibrate on (default: 64)")
    p.set_defaults(func=_cmd_export)


# ----------------------------------------------------------------------------------------------
# serve (the gaze viewer in the browser)
# ----------------------------------------------------------------------------------------------
def _cmd_serve(args: argparse.Namespace) -> int:
    from ..apps.serve.page import launch
    from ..apps.serve.session import Viewer
    from ..config import DEFAULT_HOST

    viewer = Viewer(args.checkpoint, args.data, device=args.device, amp=args.amp)
    if args.host not in (DEFAULT_HOST, "localhost", "::1"):
        log.warning("serving on %s: other machines can reach the viewer, and it has no login", args.host)
    print(f"dermogaze viewer of {args.checkpoint}: open http://{args.host}:{args.port} in a browser (Ctrl-C stops it)")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's start-up requests to its own server
    launch(viewer, host=args.host, port=args.port, quiet=True)
    return 0


def add_serve(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``serve`` to ``sub``."""
    from ..config import DEFAULT_HOST, DEFAULT_PORT

    p = sub.add_parser(
        "serve",
        help=help_line,
        description="Serve a web page (Gradio, offline) over a checkpoint: upload a JPEG/PNG or pick an image of a "
        "prepared split (--data, with its ground truth) and see P(melanoma), the decision at the checkpoint's "
        "threshold, the numbered gaze path, each gaze's attention, mask and structure, and the diagnosis recomputed "
        "without the gazes you switch off. Bound to 127.0.0.1 (this machine only) unless --host says otherwise.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PT", help="checkpoint written by 'dermogaze train' "
                   "(RUN/best.pt)")
    p.add_argument("--data", metavar="CACHE", help="prepared cache whose images the page offers, with ground truth")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default: {DEFAULT_HOST}, this machine "
                   "only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int_in(1, 65535, "TCP ports are 1 to 65535"), default=DEFAULT_PORT,
                   help=f"TCP port (default: {DEFAULT_PORT})")
    add_device_argument(p)
    add_amp_argument(p, follows_machine="serve")
    p.set_defaults(func=_cmd_serve)


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------
def _cmd_predict(args: argparse.Namespace) -> int:
    from ..apps.predict import predict

    out = check_output_folder(args.out) if args.format == "isic2018-task2" else check_output_file(args.out)
    result = predict(
        args.checkpoint, args.data, args.split, out, fmt=args.format, device=args.device, amp=args.amp,
        batch_size=args.batch_size, progress=not args.no_progress,
    )
    what = f"{result['files']} attribute masks in {args.out}" if args.format == "isic2018-task2" else result["files"]
    print(f"{result['format']}: {result['n_images']} images of split {args.split}: wrote {what}")
    return 0


def add_predict(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``predict`` to ``sub``."""
    from ..config import SUBMISSION_FORMATS

    p = sub.add_parser(
        "predict",
        help=help_line,
        description="Write submission files for every image of a split: isic2018-task2 writes "
        "ISIC_<id>_attribute_<name>.png at each image's original size (per attribute, the union of the gaze "
        "steps that name it, each thresholded at 0.5); isic2017-part3 writes the Part 3 CSV "
        "(image_id,melanoma,seborrheic_keratosis; dermogaze predicts melanoma only, the other column is 0.0).",
    )
    p.add_argument("--checkpoint", required=True, metavar="PT", help="RUN/best.pt or RUN/last.pt")
    p.add_argument("--data", required=True, metavar="CACHE", help="prepared cache (dermogaze data prepare)")
    p.add_argument("--split", default="test", help="cache split: train, val or test (default: test)")
    p.add_argument("--format", required=True, choices=SUBMISSION_FORMATS, help="submission format")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (isic2018-task2) or CSV file (isic2017-part3)")
    p.add_argument("--batch-size", type=batch_size_int, default=8, metavar="N", help="images per batch (default: 8)")
    add_runtime_arguments(p, workers=False)
    p.set_defaults(func=_cmd_predict)
