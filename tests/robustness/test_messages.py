"""messages: a refusal must say what is wrong in the user's terms, in its one line, and a sound file must be read.

Unclear or misleading lines: the cause of a refusal only in a warning above it, a message in the terms of the
code (folds, indexes, exception names), a value accepted at one implausible end and refused at the other, a
repeated id or column read silently, a byte-order mark (what spreadsheet programs write) that makes a sound file
unreadable, a bootstrap too small to mean anything. Each case checks the one ``dermogaze: error:`` line for the
words that name the problem (the value, the row, what is accepted), or that the sound file is read.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from .cli_probe import Probe, Proc, both, cache_count, cache_ids, check, split_folder, success, user_error

BOM = "\ufeff"


def _says(proc: Proc, *words: str, never: Sequence[str] = ()) -> tuple[bool, str]:
    """The error line holds every one of ``words`` and no word of ``never`` (the code's terms, as whole words)."""
    line = next((ln for ln in proc.err.splitlines() if "error:" in ln), "")
    missing = [w for w in words if w not in line]
    internal = [w for w in never if re.search(rf"\b{re.escape(w)}\b", line)]
    if missing:
        return False, f"the error line does not say {', '.join(map(repr, missing))}"
    return not internal, f"the error line speaks of {', '.join(map(repr, internal))}"


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# ----------------------------------------------------------------------------------------------
# A folder of images with a label CSV (data prepare --labels)
# ----------------------------------------------------------------------------------------------
N_IMAGES = 12  # enough for the default 0.8,0.1,0.1 split


def _image_folder(probe: Probe, folder: Path, n: int = N_IMAGES) -> list[str]:
    """``n`` training images of the shared collection copied into ``folder``; their ids."""
    folder.mkdir(parents=True)
    images = sorted(split_folder(probe.col, "Training", "Data").glob("ISIC_*[0-9].jpg"))[:n]
    for image in images:
        shutil.copy(image, folder / image.name)
    return [image.stem for image in images]


def _labels(ids: list[str], cell: Callable[[int, str], str], header: str = "image_id,melanoma") -> str:
    return header + "\n" + "".join(f"{i},{cell(k, i)}\n" for k, i in enumerate(ids))


def _zero_one(k: int, _: str) -> str:
    return str(k % 2)


#: case → (label CSV text of the folder's ids, its encoding, the words of the error line; None: prepare succeeds).
LABEL_FILES: dict[str, tuple[Callable[[list[str]], str], str, tuple[str, ...] | None]] = {
    "msg-labels-yes-no": (lambda ids: _labels(ids, lambda k, _: "yes" if k % 2 else "no"), "utf-8",
                          ("line 2", "'no'", "accepted: 0, 1")),
    "msg-labels-true-false": (lambda ids: _labels(ids, lambda k, _: "True" if k % 2 else "False"), "utf-8",
                              ("'False'", "accepted: 0, 1")),
    "msg-labels-one-bad-spelling": (lambda ids: _labels(ids, lambda k, _: "maybe" if k == 4 else str(k % 2)),
                                    "utf-8", ("line 6", "'maybe'", "accepted: 0, 1")),
    "msg-labels-repeated-id": (lambda ids: _labels(ids + ids[3:4], _zero_one), "utf-8",
                               ("line 14", "repeats the row of line 5")),
    "msg-labels-repeated-id-spelling": (lambda ids: _labels(ids + [ids[0].lower() + ".JPG"], _zero_one), "utf-8",
                                        ("line 14", "repeats the row of line 2")),
    "msg-labels-repeated-column": (lambda ids: _labels(ids, lambda k, _: f"{k % 2},{k % 2}",
                                                       "image_id,melanoma,Melanoma"), "utf-8",
                                   ("'melanoma' appears twice",)),
    "msg-labels-unquoted-comma": (lambda ids: _labels(ids, lambda k, _: "0,benign, nevus" if k == 2 else str(k % 2)),
                                  "utf-8", ("line 4", "the header has 2 columns")),
    "msg-labels-latin1": (lambda ids: _labels(ids, lambda k, _: "mélanome" if k % 2 else "nævus",
                                              "image_id,diagnosis"), "latin-1", ("not UTF-8",)),
    "msg-labels-age-1000": (lambda ids: _labels(ids, lambda k, _: f"{k % 2},{1000 if k == 3 else 50}",
                                                "image_id,melanoma,age_approx"), "utf-8",
                            ("line 5", "age '1000'", "from 0 to 120")),
    "msg-labels-age-minus-5": (lambda ids: _labels(ids, lambda k, _: f"{k % 2},{-5 if k == 3 else 50}",
                                                   "image_id,melanoma,age_approx"), "utf-8",
                               ("line 5", "age '-5'", "from 0 to 120")),
    "msg-labels-age-121": (lambda ids: _labels(ids, lambda k, _: f"{k % 2},{121 if k == 3 else 50}",
                                               "image_id,melanoma,age"), "utf-8", ("age '121'", "from 0 to 120")),
    "msg-labels-no-row-names-an-image": (lambda ids: _labels([f"ISIC_9{i[-6:]}" for i in ids], _zero_one), "utf-8",
                                         ("12 rows name no image",)),
    "msg-labels-every-diagnosis-unknown": (lambda ids: _labels(ids, lambda k, _: "unknown" if k % 2 else ""),
                                           "utf-8", ("12 rows of an image have an unknown diagnosis",)),
    "msg-labels-bom": (lambda ids: BOM + _labels(ids, _zero_one), "utf-8", None),
    "msg-labels-bom-utf16": (lambda ids: _labels(ids, _zero_one), "utf-16", ("not UTF-8",)),
    "msg-labels-age-120": (lambda ids: _labels(ids, lambda k, _: f"{k % 2},{120 if k == 3 else 0}",
                                               "image_id,melanoma,age_approx"), "utf-8", None),
}


@pytest.mark.parametrize(("text", "encoding", "words"), [pytest.param(*v, id=k) for k, v in LABEL_FILES.items()])
def test_a_label_csv_is_refused_in_its_own_terms_or_read(probe: Probe, tmp_path, text, encoding, words):
    """``data prepare --labels CSV`` of a folder of 12 images: yes/no or True/False labels, a bad spelling, a
    repeated id (also as another spelling of the file name), a repeated column, an unquoted comma, Latin-1 or
    UTF-16 text, an age of 1000, -5 or 121, rows naming no image, only unknown diagnoses: one line that names
    the value, the row and what is accepted. A byte-order mark and an age of 120 are read."""
    folder = tmp_path / "images"
    ids = _image_folder(probe, folder)
    csv_path = _write(tmp_path / "labels.csv", text(ids), encoding)
    cache = tmp_path / "cache"
    proc = probe.run(["data", "prepare", "--isic", folder, "--labels", csv_path, "--out", cache, "--size", 40])
    if words is None:
        n = sum(cache_count(cache, s) or 0 for s in ("train", "val", "test"))
        verdict = both(success(proc, "a sound label file"), (n == N_IMAGES, f"{n} images cached, expected 12"))
    else:
        verdict = both(user_error(proc), _says(proc, *words, never=("Error", "Traceback")))
    check(verdict, probe)


FOLDERS: dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]] = {
    "msg-empty-image-folder": (0, ("no images in",), ("folds", "row", "rows")),
    "msg-one-image-default-split": (1, ("too few", "0.8,0.1,0.1", "1,0,0"), ("folds",)),
    "msg-five-images-default-split": (5, ("too few", "at least 10"), ("folds",)),
}


@pytest.mark.parametrize(("n", "words", "never"), [pytest.param(*v, id=k) for k, v in FOLDERS.items()])
def test_a_folder_without_enough_images_is_named_in_the_users_terms(probe: Probe, tmp_path, n, words, never):
    """An empty image folder, or 1 or 5 images for the default 0.8,0.1,0.1 split: the line speaks of images and
    fractions, never of folds."""
    folder = tmp_path / "images"
    ids = _image_folder(probe, folder, n)
    labels = _write(tmp_path / "labels.csv", _labels(ids or ["ISIC_0000000", "ISIC_0000001"], _zero_one))
    proc = probe.run(["data", "prepare", "--isic", folder, "--labels", labels, "--out", tmp_path / "cache"])
    check(both(user_error(proc), _says(proc, *words, never=never)), probe)


# ----------------------------------------------------------------------------------------------
# The ISIC 2017 layout: the Part 3 ground truth and the patient metadata
# ----------------------------------------------------------------------------------------------
def _part3(col: Path) -> Path:
    return col / "ISIC-2017_Training_Part3_GroundTruth.csv"


def _metadata(col: Path) -> Path:
    return split_folder(col, "Training", "Data") / "ISIC-2017_Training_Data_metadata.csv"


def _edit_lines(path: Path, edit: Callable[[list[str]], list[str]], prefix: str = "") -> None:
    path.write_text(prefix + "\n".join(edit(path.read_text().splitlines())) + "\n", encoding="utf-8")


def _age_1000(lines: list[str]) -> list[str]:
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index("age_approximate")] = "1000"
    return [*lines[:3], ",".join(cells), *lines[4:]]


#: case → (the file of the collection to edit, the edit, a byte-order mark first, the words; None: it is read).
ISIC_FILES: dict[str, tuple[Callable[[Path], Path], Callable[[list[str]], list[str]], str,
                            tuple[str, ...] | None]] = {
    "msg-part3-bom": (_part3, lambda lines: lines, BOM, None),
    "msg-part3-repeated-id": (_part3, lambda lines: [*lines, lines[2]], "", ("line 18", "repeats the row of line 3")),
    "msg-part3-repeated-column": (_part3, lambda lines: [lines[0] + ",melanoma", *(ln + ",0.0" for ln in lines[1:])],
                                  "", ("'melanoma' appears twice",)),
    "msg-metadata-age-1000": (_metadata, _age_1000, "", ("metadata.csv", "line 4", "age '1000'", "from 0 to 120")),
    "msg-metadata-bom": (_metadata, lambda lines: lines, BOM, None),
}


@pytest.mark.parametrize(("which", "edit", "prefix", "words"), [pytest.param(*v, id=k) for k, v in ISIC_FILES.items()])
def test_an_isic_2017_csv_is_refused_in_its_own_terms_or_read(probe: Probe, tmp_path, which, edit, prefix, words):
    """A Part 3 ground truth or a metadata CSV of the ISIC 2017 layout with a byte-order mark (read), a repeated
    id or column, an age of 1000: one line naming the file, the row and the value."""
    col = probe.copy_collection(tmp_path / "collection")
    _edit_lines(which(col), edit, prefix)
    cache = tmp_path / "cache"
    proc = probe.run(["data", "prepare", "--isic", col, "--out", cache, "--size", 40])
    if words is None:
        n = cache_count(cache, "train")
        verdict = both(success(proc, "a sound ISIC file"), (n == 16, f"train split holds {n} images, expected 16"))
    else:
        verdict = both(user_error(proc), _says(proc, *words))
    check(verdict, probe)


# ----------------------------------------------------------------------------------------------
# evaluate --compare: another model's predictions.csv
# ----------------------------------------------------------------------------------------------
def _predictions(probe: Probe, cell: Callable[[int], str], extra: Callable[[list[str]], list[str]] = lambda r: r,
                 header: str = "image_id,melanoma") -> str:
    rows = [f"{i},{cell(k)}" for k, i in enumerate(cache_ids(probe.cache, "test"))]
    return "\n".join([header, *extra(rows)]) + "\n"


def _probability(k: int) -> str:
    return f"{(k + 1) / 10:.6f}"


COMPARE_FILES: dict[str, tuple[Callable[[Probe], str], tuple[str, ...] | None]] = {
    "msg-compare-repeated-id": (lambda p: _predictions(p, _probability, lambda r: [*r, r[1]]),
                                ("line 10", "repeats the row of line 3")),
    "msg-compare-nan": (lambda p: _predictions(p, lambda k: "nan" if k == 2 else _probability(k)),
                        ("line 4", "'nan'", "not a probability in [0, 1]")),
    "msg-compare-above-one": (lambda p: _predictions(p, lambda k: "1.5" if k == 0 else _probability(k)),
                              ("line 2", "'1.5'", "not a probability")),
    "msg-compare-negative": (lambda p: _predictions(p, lambda k: "-0.2" if k == 5 else _probability(k)),
                             ("line 7", "'-0.2'", "not a probability")),
    "msg-compare-no-melanoma-column": (lambda p: _predictions(p, _probability, header="image_id,probability"),
                                       ("no melanoma column",)),
    "msg-compare-header-only": (lambda p: "image_id,melanoma\n", ("no predictions",)),
    "msg-compare-bom": (lambda p: BOM + _predictions(p, _probability), None),
}


@pytest.mark.parametrize(("text", "words"), [pytest.param(*v, id=k) for k, v in COMPARE_FILES.items()])
def test_a_compare_file_is_refused_by_row_or_read(probe: Probe, tmp_path, text, words):
    """``evaluate --compare CSV`` with a repeated id, a NaN, 1.5 or -0.2 probability, no melanoma column or no
    row: one line naming the row and the value, before the model runs. A byte-order mark is read: DeLong's test
    of the 8 test images is written."""
    other = _write(tmp_path / "other.csv", text(probe))
    out = tmp_path / "eval"
    proc = probe.run(probe.eval_args(probe.best, out, "--compare", other, "--faithfulness", 0))
    if words is None:
        try:
            n = json.loads((out / "metrics.json").read_text())["compare"]["n"]
        except (OSError, ValueError, KeyError, TypeError):
            n = None
        verdict = both(success(proc, "a predictions file with a byte-order mark"),
                       (n == 8, f"compare holds n = {n}, expected 8"))
    else:
        verdict = both(user_error(proc), _says(proc, *words),
                       (not out.exists(), "the evaluation ran before the refusal"))
    check(verdict, probe)


# ----------------------------------------------------------------------------------------------
# A bootstrap too small to mean anything; an empty preset list
# ----------------------------------------------------------------------------------------------
SMALL_BOOTSTRAPS: dict[str, Callable[[Probe, Path], list[Any]]] = {
    "msg-evaluate-bootstrap-1": lambda p, o: p.eval_args(p.best, o, "--bootstrap", 1),
    "msg-evaluate-bootstrap-99": lambda p, o: p.eval_args(p.best, o, "--bootstrap", 99),
    "msg-compare-bootstrap-1": lambda p, o: ["compare", p.run_dir, "--out", o, "--bootstrap", 1],
    "msg-table3-bootstrap-1": lambda p, o: p.table3_args(o, "--bootstrap", 1),
}


@pytest.mark.parametrize("make", [pytest.param(v, id=k) for k, v in SMALL_BOOTSTRAPS.items()])
def test_a_bootstrap_too_small_to_mean_anything_is_refused(probe: Probe, tmp_path, make):
    """``--bootstrap 1`` or ``99`` (zero-wide or meaningless 95% intervals): one line with the minimum and why,
    nothing written."""
    out = tmp_path / "out"
    proc = probe.run(make(probe, out))
    check(both(user_error(proc), _says(proc, "--bootstrap", ">= 100", "percentiles"),
               (not out.exists(), "output written")), probe)


@pytest.mark.parametrize("presets", [pytest.param("", id="msg-table3-presets-empty"),
                                     pytest.param(" , ,", id="msg-table3-presets-commas")])
def test_an_empty_preset_list_is_one_line(probe: Probe, tmp_path, presets):
    """``table3 --presets ''`` or ``' , ,'``: one line saying no preset is named, nothing trained."""
    out = tmp_path / "t3"
    proc = probe.run(["table3", "--data", probe.cache, "--out", out, "--presets", presets])
    check(both(user_error(proc), _says(proc, "no preset", "deco_gap_3"), (not out.exists(), "output written")), probe)


# ----------------------------------------------------------------------------------------------
# gaze compare: the fixations CSV and the record
# ----------------------------------------------------------------------------------------------
def _record(path: Path) -> Path:
    record = {"image_id": "ISIC_2000000", "image_size": {"width": 64, "height": 48},
              "steps": [{"step": t + 1, "gaze": {"x": 8 + 12 * t, "y": 10 + 8 * t}, "attention": 0.1 + 0.05 * t}
                        for t in range(4)]}
    path.write_text(json.dumps(record))
    return path


FIXATIONS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "msg-fixations-bom": (BOM + "x,y,duration_ms\n10,10,200\n30,20,250\n50,40,180\n20,30,300\n", None),
    "msg-fixations-repeated-column": ("x,y,x,duration_ms\n10,10,5,200\n30,20,5,250\n50,40,5,180\n",
                                      ("line 1", "'x' appears twice")),
    "msg-fixations-unquoted-comma": ("x,y,duration_ms\n10,10,200\n30,20,250,5\n50,40,180\n",
                                     ("line 3", "the header has 3 columns")),
}


@pytest.mark.parametrize(("text", "words"), [pytest.param(*v, id=k) for k, v in FIXATIONS.items()])
def test_a_fixations_csv_is_refused_in_its_own_terms_or_read(probe: Probe, tmp_path, text, words):
    """``gaze compare`` with a fixations CSV that starts with a byte-order mark (read), repeats a column or has a
    row of more values than columns (one line naming the row)."""
    fixations = _write(tmp_path / "fix.csv", text)
    proc = probe.run(["gaze", "compare", _record(tmp_path / "rec.json"), fixations])
    check(success(proc, "a sound fixations file") if words is None else both(user_error(proc), _says(proc, *words)),
          probe)


# ----------------------------------------------------------------------------------------------
# Folders and files given in the wrong place
# ----------------------------------------------------------------------------------------------
MISPLACED: dict[str, tuple[Callable[[Probe, Path], list[Any]], tuple[str, ...], tuple[str, ...]]] = {
    "msg-collection-as-cache": (lambda p, d: p.eval_args(p.best, d / "eval", data=p.col),
                                ("is not a prepared cache", "data prepare"), ("interrupted",)),
    "msg-run-folder-as-cache": (lambda p, d: ["data", "stats", p.run_dir], ("is not a prepared cache",),
                                ("interrupted",)),
    "msg-yaml-as-record": (lambda p, d: ["gaze", "compare", p.run_dir / "config.yaml",
                                         _write(d / "fix.csv", "x,y,duration_ms\n1,1,100\n2,2,100\n3,3,100\n")],
                           ("config.yaml", "not an explanation record", "not JSON"), ("JSONDecodeError",)),
}


@pytest.mark.parametrize(("make", "words", "never"), [pytest.param(*v, id=k) for k, v in MISPLACED.items()])
def test_a_file_in_the_wrong_place_is_named_for_what_it_is(probe: Probe, tmp_path, make, words, never):
    """A collection or a run folder given as the cache, a YAML file as the explanation record: the line says
    what the folder or file is not and what to give, never 'interrupted' or an exception's name."""
    proc = probe.run(make(probe, tmp_path))
    check(both(user_error(proc), _says(proc, *words, never=never)), probe)
