"""Gaze sequences as scanpaths: MultiMatch against human eye tracking, and stability under flips/rotations.

The paper judged its gazes by eye (Figs. 7-8) and left a comparison with dermatologists' eye
tracking to future work (§5), naming the measure of Jarodzka et al. (ref. [47]). A sequence of
gazes is a *scanpath*, and MultiMatch (Jarodzka et al., ETRA 2010; Dewhurst et al., BRM 2012; the
package ``multimatch-gaze``) compares two scanpaths on five similarities in ``[0, 1]`` (1 = identical).

How MultiMatch compares fixations ``f_1..f_n`` and ``g_1..g_m`` (what :func:`multimatch` returns;
no simplification of the scanpaths, the package's default):

=============  =================================================================================
saccades       ``u_i = f_{i+1} - f_i`` (``n - 1`` of them), ``v_j`` likewise
alignment      the monotone path from ``(1, 1)`` to ``(n-1, m-1)`` (steps right, down, diagonal)
               through the matrix ``|u_i - v_j|`` with the least summed difference (Dijkstra)
vector         ``1 - median |u_i - v_j| / (2·D)`` over the aligned pairs, ``D`` = image diagonal
direction      ``1 - median angle(u_i, v_j) / π``
length         ``1 - median | |u_i| - |v_j| | / D``
position       ``1 - median |f_i - g_j| / D``: the saccades' *start* points (the last fixation
               enters only through the vectors)
duration       ``1 - median |d(f_i) - d(g_j)| / max(d(f_i), d(g_j))``
=============  =================================================================================

The "screen" that normalises the distances is the image, ``D = sqrt(W² + H²)`` in its own pixels.
MultiMatch needs at least three fixations (two saccades) on each side.

**A model gaze as a fixation** (:func:`gaze_fixations`). The fixation of step ``t`` lies at its gaze
(the arg-max cell of ``A_t`` in image pixels, :func:`dermogaze.metrics.explanation.gaze_points`) and lasts in
proportion to the attention at that peak, ``a_t = max A_t``: a sharper look is a longer dwell.
The model has no clock, so only the *relative* dwell means anything; the scale is set so that the
model's mean fixation lasts as long as the human's:
``duration_t = a_t / Σ_s a_s · T · mean_ms`` with ``mean_ms`` the human scanpath's mean fixation
duration (``dermogaze gaze compare``), or :data:`NOMINAL_FIXATION_MS` when there is no human
scanpath (stability, where durations are not used). MultiMatch's duration similarity is a ratio
per aligned pair, so with this scale it measures whether model and human dwell longer on the same
steps, not a unit.

**Human fixations** (:func:`read_fixations_csv`): a CSV with columns ``x, y, duration_ms`` in the
image's own pixels (column ``x``, row ``y``, origin top-left), one fixation per row in viewing
order, as eye trackers export; other columns are ignored; at most :data:`MAX_FIXATIONS` rows.

**Stability** (:func:`view_stability`, docs/design.md §6b): the network sees an image and its 7 other
flips/rotations (the dihedral group of the square, :data:`dermogaze.data.transforms.DIHEDRAL`, the
views of test-time augmentation); each view's attention maps are turned back into the original frame,
and the gaze sequence taken from them is compared with the original view's: MultiMatch position
similarity, and a *shape* similarity = the mean of the vector, direction and length similarities
(the saccades' geometry, leaving out where they lie and how long they last). ``p_spread`` is the
range (max − min) of P(melanoma) over the 8 views. A network whose attention is equivariant and
whose diagnosis is invariant under the group scores 1, 1 and 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import multimatch_gaze
import numpy as np
import torch
from torch import Tensor, nn

from ..data.transforms import DIHEDRAL, dihedral_inverse, dihedral_views
from ..errors import DataError, DermogazeError
from ..files import parse_csv_file
from .explanation import gaze_points

#: MultiMatch's five similarities, in the package's order.
SIMILARITIES = ("vector", "direction", "length", "position", "duration")

#: The similarities whose mean is the stability's *shape* similarity (saccade geometry only).
SHAPE_SIMILARITIES = ("vector", "direction", "length")

#: MultiMatch compares saccades: it needs two of them, i.e. three fixations, on each side.
MIN_FIXATIONS = 3

#: Mean fixation duration given to a model's gazes when no human scanpath sets the scale (a typical
#: fixation in free viewing lasts 200-300 ms).
NOMINAL_FIXATION_MS = 300.0

#: The record arrays ``multimatch_gaze.docomparison`` reads: start point in pixels, duration in seconds.
FIXATION_DTYPE = np.dtype([("start_x", "f8"), ("start_y", "f8"), ("duration", "f8")])

#: Columns of a human fixations CSV.
CSV_COLUMNS = ("x", "y", "duration_ms")

#: The most fixations a human scanpath may hold. Ten minutes on one image at three fixations a second is under
#: 2000; MultiMatch's alignment costs grow with the square of the length (seconds at this bound, hours at a
#: file of raw gaze samples), so a longer file is refused before it is compared.
MAX_FIXATIONS = 5_000


# ----------------------------------------------------------------------------------------------
# Fixations
# ----------------------------------------------------------------------------------------------


def make_fixations(x: Sequence[float], y: Sequence[float], duration_s: Sequence[float]) -> np.ndarray:
    """A scanpath as MultiMatch's record array (fields ``start_x``, ``start_y``, ``duration`` in seconds).

    Shape:
        three sequences of length ``n`` → structured array ``(n,)`` of :data:`FIXATION_DTYPE`.
    """
    out = np.empty(len(x), dtype=FIXATION_DTYPE)
    out["start_x"], out["start_y"], out["duration"] = x, y, duration_s
    return out


def gaze_fixations(
    points: Sequence[tuple[float, float]], peaks: Sequence[float], mean_duration_ms: float = NOMINAL_FIXATION_MS
) -> np.ndarray:
    """Model gazes as fixations: at each gaze point, lasting in proportion to its attention peak.

    ``duration_t = peaks_t / Σ peaks · T · mean_duration_ms`` (module docstring), so the mean
    fixation lasts ``mean_duration_ms``.

    Args:
        points: ``T`` gaze points ``(x, y)`` in image pixels.
        peaks: ``T`` attention values at the gazes, ``max A_t`` (positive).
        mean_duration_ms: the mean fixation duration the model's scanpath is given.

    Returns:
        ``(T,)`` array of :data:`FIXATION_DTYPE`.
    """
    peaks = np.asarray(peaks, dtype=np.float64)
    xs, ys = zip(*points, strict=True) if len(points) else ((), ())
    seconds = peaks / peaks.sum() * len(peaks) * mean_duration_ms / 1000.0 if len(peaks) else peaks
    return make_fixations(xs, ys, seconds)


def _brief(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_record(path: str | Path) -> dict[str, Any]:
    """An explanation record written by ``dermogaze explain`` (``<id>.json``), checked for what a scanpath needs.

    Raises:
        DataError: unreadable JSON, or not a record (no ``image_size`` / ``steps``); the message names the file.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not an explanation record of 'dermogaze explain' (not JSON: {exc.msg} at line "
                        f"{exc.lineno}, column {exc.colno})") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: unreadable explanation record ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("steps"), list) or not isinstance(
        record.get("image_size"), dict
    ):
        raise DataError(f"{path}: not an explanation record of 'dermogaze explain' (no image_size and steps)")
    return record


def record_fixations(
    record: Mapping[str, Any], source: str | Path = "the record", mean_duration_ms: float = NOMINAL_FIXATION_MS
) -> np.ndarray:
    """The model's scanpath of an explanation record: each step's ``gaze`` and its ``attention`` peak.

    Args:
        record: from :func:`read_record` (or :func:`dermogaze.explain.record.explain_record`).
        source: the record's file, named in errors.
        mean_duration_ms: see :func:`gaze_fixations`.

    Raises:
        DataError: a record without gazes (a variant without attention) or with a malformed step.
    """
    steps = record["steps"]
    if steps and all(isinstance(s, dict) and s.get("gaze") is None for s in steps):
        raise DataError(f"{source}: the record has no gazes (its model has no attentive ConvLSTM)")
    points, peaks = [], []
    for k, step in enumerate(steps, start=1):
        try:
            x, y, a = float(step["gaze"]["x"]), float(step["gaze"]["y"]), float(step["attention"])
        except (TypeError, KeyError, ValueError):
            raise DataError(f"{source}: step {k} has no numeric gaze {{x, y}} and attention") from None
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(a) and a > 0):
            raise DataError(f"{source}: step {k} has a gaze ({x}, {y}) or attention {a} that is not finite/positive")
        points.append((x, y))
        peaks.append(a)
    return gaze_fixations(points, peaks, mean_duration_ms)


def read_fixations_csv(path: str | Path, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """A human scanpath: a CSV with columns ``x, y, duration_ms`` (image pixels, viewing order).

    The header is required; column names are matched without regard to case or surrounding spaces;
    other columns are ignored; values may carry spaces; blank lines are skipped; at most :data:`MAX_FIXATIONS`
    rows.

    Args:
        path: the CSV file.
        image_size: ``(width, height)`` of the image: fixations outside ``[0, W] × [0, H]`` are refused
            (coordinates of the screen rather than of the image). ``None`` checks nothing.

    Returns:
        ``(n,)`` array of :data:`FIXATION_DTYPE` (durations in seconds).

    Raises:
        DataError: unreadable file (:func:`~dermogaze.files.parse_csv_file`), missing column, more than
            :data:`MAX_FIXATIONS` rows, a value that is not a finite number, a duration that is not positive, a
            fixation outside the image; the message names the file and line.
    """
    path = Path(path)
    table = parse_csv_file(path, "fixations CSV")
    missing = [c for c in CSV_COLUMNS if c not in table.columns]
    if missing:
        found = ", ".join(_brief(c) for c in table.columns[:8]) or "nothing"
        raise DataError(
            f"{path}: line 1: expected a header with columns {', '.join(CSV_COLUMNS)} (comma-separated), "
            f"found {found}; missing {', '.join(missing)}"
        )
    if len(table.rows) > MAX_FIXATIONS:
        raise DataError(
            f"{path}: {len(table.rows)} fixations, more than the {MAX_FIXATIONS} MultiMatch compares (its alignment "
            "grows with the square of the length): give the fixations of one viewing of the image, not raw gaze "
            "samples"
        )
    values: list[tuple[float, float, float]] = []
    for line, row in table.rows:
        where = f"{path}: line {line}"
        fields = []
        for name in CSV_COLUMNS:
            cell = row[name].strip()
            try:
                v = float(cell)
            except ValueError:
                raise DataError(f"{where}: {name} {_brief(cell)!r} is not a number") from None
            if not math.isfinite(v):
                raise DataError(f"{where}: {name} {cell!r} is not a finite number")
            fields.append(v)
        x, y, ms = fields
        if ms <= 0:
            raise DataError(f"{where}: duration_ms {ms:g} is not positive")
        if image_size is not None and not (0 <= x <= image_size[0] and 0 <= y <= image_size[1]):
            raise DataError(
                f"{where}: fixation ({x:g}, {y:g}) lies outside the image ({image_size[0]}×{image_size[1]} px): "
                "give coordinates in the image's own pixels, not the screen's"
            )
        values.append((x, y, ms))
    if not values:
        raise DataError(f"{path}: no fixations (only a header)")
    xs, ys, ms = zip(*values, strict=True)
    return make_fixations(xs, ys, np.asarray(ms) / 1000.0)


# ----------------------------------------------------------------------------------------------
# MultiMatch
# ----------------------------------------------------------------------------------------------


def multimatch(
    first: np.ndarray, second: np.ndarray, image_size: tuple[float, float], names: tuple[str, str] = ("first", "second")
) -> dict[str, float]:
    """MultiMatch's five similarities of two scanpaths (module docstring), each in ``[0, 1]``.

    Args:
        first, second: arrays of :data:`FIXATION_DTYPE`.
        image_size: ``(width, height)`` in pixels, the "screen" that normalises the distances.
        names: what the two scanpaths are, for the error message.

    Returns:
        ``{name: similarity}`` for :data:`SIMILARITIES`.

    Raises:
        DermogazeError: a scanpath with fewer than :data:`MIN_FIXATIONS` fixations.
    """
    for name, path in zip(names, (first, second), strict=True):
        if len(path) < MIN_FIXATIONS:
            raise DermogazeError(
                f"MultiMatch needs at least {MIN_FIXATIONS} fixations on each side (two saccades to compare); "
                f"{name} has {len(path)}"
            )
    values = multimatch_gaze.docomparison(first, second, screensize=[float(image_size[0]), float(image_size[1])])
    return {name: float(v) for name, v in zip(SIMILARITIES, values, strict=True)}


def shape_similarity(similarities: Mapping[str, float]) -> float:
    """Shape similarity: the mean of MultiMatch's vector, direction and length similarities."""
    return float(np.mean([similarities[k] for k in SHAPE_SIMILARITIES]))


def compare_record(record_path: str | Path, fixations_path: str | Path) -> dict[str, Any]:
    """``dermogaze gaze compare``: a model's gaze sequence (explanation record) vs a human scanpath (CSV).

    The model's fixations get the human scanpath's mean fixation duration (module docstring); the
    image of the record (its ``image_size``) is the screen.

    Returns:
        ``{"similarities": {name: value}, "image_id", "image_size": [W, H], "model_fixations": T,
        "human_fixations": n, "mean_fixation_ms": the human mean}``.

    Raises:
        DataError: unreadable or malformed record or CSV (named, with the line for the CSV).
        DermogazeError: fewer than three gazes or fixations.
    """
    record = read_record(record_path)
    size = record["image_size"]
    try:
        width, height = int(size["width"]), int(size["height"])
    except (TypeError, KeyError, ValueError):
        raise DataError(f"{record_path}: image_size is not {{width, height}}") from None
    human = read_fixations_csv(fixations_path, (width, height))
    mean_ms = float(human["duration"].mean() * 1000.0)
    model = record_fixations(record, record_path, mean_ms)
    names = (f"the model's gaze sequence in {record_path}", f"the human scanpath in {fixations_path}")
    return {
        "similarities": multimatch(model, human, (width, height), names),
        "image_id": record.get("image_id"),
        "image_size": [width, height],
        "model_fixations": len(model),
        "human_fixations": len(human),
        "mean_fixation_ms": mean_ms,
    }


# ----------------------------------------------------------------------------------------------
# Stability under the dihedral group
# ----------------------------------------------------------------------------------------------


def stability_unavailable(steps: int | None) -> str | None:
    """Why the gaze part of :func:`view_stability` cannot be computed for a model with ``steps`` gazes
    (``None``: no attention maps), or ``None`` when it can."""
    if steps is None:
        return "no gazes to compare: the model has no attention maps (a variant without an attentive ConvLSTM)"
    if steps < MIN_FIXATIONS:
        return f"MultiMatch needs at least {MIN_FIXATIONS} gazes and the model makes {steps}"
    return None


@torch.no_grad()
def view_stability(model: nn.Module, images: Tensor, *, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """Stability of the gazes and the diagnosis under the 8 flips/rotations of each image (docs/design.md §6b).

    One forward pass over the ``8·B`` views (in eval mode; the model's mode is restored). Each
    view's attention maps are mapped back to the original frame
    (:func:`~dermogaze.data.transforms.dihedral_inverse`), its gazes are their arg-max cells
    (:func:`~dermogaze.metrics.explanation.gaze_points`, in input pixels) and its
    scanpath is compared with the original view's by MultiMatch, the input being the screen.

    Args:
        model: returns a :class:`~dermogaze.models.output.GazeOutput` for ``(N, 3, S, S)`` images.
        images: ``(B, 3, S, S)`` normalised, square images.
        temperature: the checkpoint's temperature for P(melanoma) (1 = the network's own).

    Returns:
        per image, ``(B,)`` float arrays: ``position`` (mean MultiMatch position similarity over the 7
        views vs the original), ``shape`` (mean of :func:`shape_similarity`) and ``p_spread``
        (max − min of P(melanoma) over the 8 views). When the model has no attention or fewer than
        three steps, ``position`` and ``shape`` are NaN and the dict also holds ``reason``, a 0-d string
        array (``str(result["reason"])``, the text of :func:`stability_unavailable`).
    """
    b, _, height, width = images.shape
    if height != width:
        raise DermogazeError(f"stability needs square images (rotations), got {height}×{width}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    views = torch.cat(dihedral_views(images)).to(device)  # (8B, 3, S, S), in DIHEDRAL order
    was_training = model.training
    model.eval()
    try:
        out = model(views)
    finally:
        model.train(was_training)
    n_views = len(DIHEDRAL)
    probs = out.calibrated_melanoma_prob(temperature).float().view(n_views, b).cpu().numpy()  # (8, B)
    result = {"p_spread": (probs.max(0) - probs.min(0)).astype(np.float64)}
    reason = stability_unavailable(None if out.attention is None else out.attention.shape[1])
    if reason is not None:
        nan = np.full(b, np.nan)
        return {"position": nan, "shape": nan.copy(), **result, "reason": np.array(reason)}

    attention = out.attention.float().view(n_views, b, *out.attention.shape[1:])  # (8, B, T, h, w)
    back = torch.stack([dihedral_inverse(attention[v], k, flip) for v, (k, flip) in enumerate(DIHEDRAL)])
    back = back.cpu().numpy()  # (8, B, T, h, w), every view in the original frame
    position, shape = np.empty(b), np.empty(b)
    for i in range(b):
        paths = [
            gaze_fixations(gaze_points(back[v, i], (height, width)), back[v, i].max(axis=(1, 2)))
            for v in range(n_views)
        ]
        sims = [multimatch(paths[0], paths[v], (width, height)) for v in range(1, n_views)]
        position[i] = np.mean([s["position"] for s in sims])
        shape[i] = np.mean([shape_similarity(s) for s in sims])
    return {"position": position, "shape": shape, **result}
