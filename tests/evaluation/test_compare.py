"""``dermogaze compare``: the table of several runs, checked against scikit-learn, DeLong and hand-made metrics."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from dermogaze.cli import main
from dermogaze.errors import DermogazeError
from dermogaze.evaluation.tables import format_interval
from dermogaze.metrics.clinical import delong_test

pytestmark = pytest.mark.usefixtures("one_thread")


def _predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["image_id"] for r in rows], np.array([int(r["label"]) for r in rows]), np.array(
        [float(r["melanoma"]) for r in rows])


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def second_run(pipeline_cache, tmp_path_factory) -> Path:
    """A 1-epoch tiny run with another seed than ``pipeline_tiny_run``: other predictions on the same images."""
    from dermogaze.config import load_config
    from dermogaze.training import train

    run = tmp_path_factory.mktemp("compare_runs") / "seed1"
    train(load_config("tiny", [f"data.cache={pipeline_cache}", "train.epochs=1", "train.seed=1"]), run,
          progress=False)
    return run


def test_compare_two_runs_matches_sklearn_and_delong(pipeline_tiny_run, second_run, tmp_path, capsys):
    out = tmp_path / "cmp"
    status = main(["compare", str(pipeline_tiny_run), str(second_run), "--out", str(out), "--bootstrap", "200",
                   "--device", "cpu", "--no-progress"])
    assert status == 0
    printed = capsys.readouterr().out

    ids_a, labels, probs_a = _predictions(out / "tiny" / "predictions.csv")
    ids_b, labels_b, probs_b = _predictions(out / "seed1" / "predictions.csv")
    assert ids_a == ids_b and list(labels) == list(labels_b)
    assert 0 < labels.sum() < labels.size  # both classes: every statistic is defined
    assert not np.allclose(probs_a, probs_b)  # two different models

    rows = _csv_rows(out / "compare.csv")
    assert [r["run"] for r in rows] == ["tiny", "seed1"]
    for row, probs in zip(rows, (probs_a, probs_b), strict=True):
        assert float(row["auc"]) == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
        assert float(row["ap"]) == pytest.approx(average_precision_score(labels, probs), abs=1e-12)
        assert float(row["auc_low"]) <= float(row["auc"]) <= float(row["auc_high"])
        assert row["variant"] == "deco_gap_3" and row["n"] == str(labels.size)
    # DeLong against the first run, from the project's implementation on the same predictions.
    expected = delong_test(labels, probs_b, probs_a)
    assert rows[0]["delong_p"] == "" and rows[0]["delta_auc"] == ""
    assert float(rows[1]["delong_p"]) == pytest.approx(expected["p_value"], abs=1e-12)
    assert float(rows[1]["delta_auc"]) == pytest.approx(roc_auc_score(labels, probs_b) - roc_auc_score(labels, probs_a))
    assert [float(rows[1]["delta_auc_low"]), float(rows[1]["delta_auc_high"])] == pytest.approx(expected["ci"])

    markdown = (out / "compare.md").read_text()
    assert markdown in printed
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 4 and table[1].count("---") == table[0].count(" | ") + 1  # header, separator, 2 rows
    first = [c.strip() for c in table[2].strip("|").split("|")]
    second = [c.strip() for c in table[3].strip("|").split("|")]
    auc = format_interval(float(rows[0]["auc"]), (float(rows[0]["auc_low"]), float(rows[0]["auc_high"])))
    assert first[:3] == ["`tiny`", "deco_gap_3", auc]
    assert first[7:9] == ["—", "—"] and second[8] == f"{expected['p_value']:.3f}"
    # The explanation measures of the evaluation (docs/design.md §6b) fill their columns for this attentive variant.
    assert first[12] == f"{float(rows[0]['pointing_matched']):.3f}"
    assert 0.0 <= float(rows[1]["pointing_named"]) <= 1.0 and float(rows[0]["relevance_lift"]) >= 0.0


#: Hand-made evaluations: a decoder run with every section, a run without decoder, superpixels or explanations.
_FULL = {
    "info": {"checkpoint": "a/best.pt", "variant": "deco_gap_3", "epoch": 7},
    "diagnosis": {"auc": 0.8, "ap": 0.6, "n": 10, "n_pos": 4},
    "diagnosis_ci": {"auc": [0.7, 0.9], "ap": [0.5, 0.7], "specificity_at_sensitivity_0.82": [0.3, 0.6],
                     "specificity_at_sensitivity_0.89": [0.2, 0.5], "specificity_at_sensitivity_0.95": [0.0, 0.4]},
    "operating_points": {"specificity_at_sensitivity": {"0.82": 0.5, "0.89": 0.4, "0.95": 0.2},
                         "sensitivity_at_specificity": {"0.80": 0.9, "0.90": 0.8, "0.95": 0.7}},
    "structures": {"map_iou_class_aware": 0.25, "jaccard_lesion_skin": 0.6},
    "superpixel_auc": {"pigment_network": 0.65, "mean": 0.7},
    "explanation": {
        "pointing_matched": {"overall": 0.5, "per_structure": {"lesion": 0.9}},
        "pointing_named": {"overall": 0.75, "per_structure": {"lesion": 1.0}},
        "relevance_lift": {"overall": 1.8, "per_structure": {"lesion": 1.2}},
        "hallucination_rate": 0.1,
        "deletion": {"auc": 0.3, "random_auc": 0.45},
        "insertion": {"auc": 0.7, "random_auc": 0.55},
    },
}
_BARE = {
    "info": {"checkpoint": "b/best.pt", "variant": "vgg", "epoch": 3},
    "diagnosis": {"auc": 0.7, "ap": 0.5, "n": 10, "n_pos": 4},
    "diagnosis_ci": {"auc": [0.55, 0.85], "ap": [0.4, 0.6], "specificity_at_sensitivity_0.82": [0.1, 0.5],
                     "specificity_at_sensitivity_0.89": [0.1, 0.4], "specificity_at_sensitivity_0.95": [0.0, 0.3]},
    "operating_points": {"specificity_at_sensitivity": {"0.82": 0.25, "0.89": 0.2, "0.95": 0.1},
                         "sensitivity_at_specificity": {"0.80": 0.5, "0.90": 0.4, "0.95": 0.3}},
    "compare": {"difference": -0.1, "ci": [-0.2, 0.0], "p_value": 0.04, "auc_a": 0.7, "auc_b": 0.8},
}


def test_compare_table_of_crafted_evaluations(tmp_path, monkeypatch):
    import dermogaze.evaluation.compare as compare

    calls = []

    def fake_evaluate(checkpoint, cache, split, out_dir, *, compare=None, **kwargs):
        calls.append((Path(checkpoint), cache, split, compare))
        metrics = _FULL if Path(checkpoint).parent.name == "a" else _BARE
        return {"metrics": metrics, "out_dir": out_dir, "files": {"predictions": Path(out_dir) / "predictions.csv"}}

    monkeypatch.setattr(compare, "evaluate_checkpoint", fake_evaluate)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "best.pt").write_bytes(b"")
    out = tmp_path / "cmp"
    result = compare.compare_runs([tmp_path / "a", tmp_path / "b"], split="val", cache="CACHE", out_dir=out)

    # One evaluation path: best.pt of each run, the same cache and split, DeLong against the first's predictions.
    assert calls == [(tmp_path / "a" / "best.pt", Path("CACHE"), "val", None),
                     (tmp_path / "b" / "best.pt", Path("CACHE"), "val", out / "a" / "predictions.csv")]
    lines = (out / "compare.md").read_text().splitlines()
    assert lines[0] == "# 2 runs on CACHE (val split: 10 images, 4 melanoma)"
    assert lines[4] == (
        "| run | variant | AUC [95% CI] | AP [95% CI] | spec. at 82% sens. | spec. at 89% sens. | spec. at 95% sens. "
        "| ΔAUC vs first [95% CI] | DeLong p | structure mAP | Jaccard lesion+skin | Task 2 AUC | pointing (matched) "
        "| pointing (named) | relevance lift | hallucination rate | deletion AUC (random) | insertion AUC (random) |"
    )
    assert lines[5] == "|" + "---|" * 18
    assert lines[6] == (
        "| `a` | deco_gap_3 | 0.800 [0.70, 0.90] | 0.600 [0.50, 0.70] | 0.500 [0.30, 0.60] | 0.400 [0.20, 0.50] "
        "| 0.200 [0.00, 0.40] | — | — | 0.250 | 0.600 | 0.700 | 0.500 | 0.750 | 1.800 | 0.100 | 0.300 (0.450) "
        "| 0.700 (0.550) |"
    )
    assert lines[7] == (
        "| `b` | vgg | 0.700 [0.55, 0.85] | 0.500 [0.40, 0.60] | 0.250 [0.10, 0.50] | 0.200 [0.10, 0.40] "
        "| 0.100 [0.00, 0.30] | -0.100 [-0.20, 0.00] | 0.040 | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |"
    )
    assert len(lines) == 8

    rows = _csv_rows(out / "compare.csv")
    assert list(rows[0])[:8] == ["run", "checkpoint", "variant", "best_epoch", "n", "n_pos", "auc", "auc_low"]
    a, b = rows
    assert (a["auc"], a["auc_low"], a["auc_high"], a["best_epoch"]) == ("0.8", "0.7", "0.9", "7")
    assert (a["specificity_at_sensitivity_0.89"], a["map_iou"], a["superpixel_auc"]) == ("0.4", "0.25", "0.7")
    assert (a["pointing_matched"], a["relevance_lift"], a["hallucination_rate"]) == ("0.5", "1.8", "0.1")
    assert (a["deletion_auc"], a["deletion_random_auc"], a["insertion_auc"]) == ("0.3", "0.45", "0.7")
    assert a["delta_auc"] == a["delong_p"] == ""
    assert (b["delta_auc"], b["delta_auc_low"], b["delta_auc_high"], b["delong_p"]) == ("-0.1", "-0.2", "0.0", "0.04")
    assert all(b[k] == "" for k in ("map_iou", "jaccard_lesion_skin", "superpixel_auc", "pointing_named",
                                    "insertion_random_auc"))
    assert result["rows"][1]["map_iou"] is None


def test_compare_errors_are_one_line(pipeline_tiny_run, tmp_path, capsys):
    from dermogaze.evaluation.compare import compare_runs
    from dermogaze.training.checkpoint import save_checkpoint

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", str(pipeline_tiny_run), str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("dermogaze: error:") and f"{empty} has no best.pt" in err

    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such run folder" in capsys.readouterr().err

    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    assert main(["compare", str(pipeline_tiny_run), "--out", str(taken)]) == 2
    assert f"--out {taken} is not a folder" in capsys.readouterr().err and taken.read_text() == "keep me"

    with pytest.raises(DermogazeError, match="given twice"):
        compare_runs([pipeline_tiny_run, pipeline_tiny_run / "best.pt"], out_dir=tmp_path / "o")

    # Two runs trained on different caches: refused (their test sets differ) unless --data names one.
    other = tmp_path / "other"
    other.mkdir()
    ckpt = torch.load(pipeline_tiny_run / "best.pt", weights_only=True)
    ckpt["config"]["data"]["cache"] = str(tmp_path / "another_cache")
    save_checkpoint(other / "best.pt", ckpt)
    assert main(["compare", str(pipeline_tiny_run), str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "different caches" in err and "--data CACHE" in err
    assert not (tmp_path / "o" / "compare.md").exists()


# ----------------------------------------------------------------------------------------------
# --compare: another model's predictions.csv, read by row
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "message"), [
    ("image_id,melanoma\nISIC_1,0.2\nISIC_2,0.7\nISIC_1,0.4\n", "line 4: ISIC_1 repeats the row of line 2"),
    ("image_id,melanoma\nISIC_1,nan\n", "line 2: melanoma 'nan' of ISIC_1 is not a probability in [0, 1]"),
    ("image_id,melanoma\nISIC_1,0.5\nISIC_2,1.5\n", "line 3: melanoma '1.5' of ISIC_2 is not a probability"),
    ("image_id,melanoma\nISIC_1,-0.1\n", "line 2: melanoma '-0.1' of ISIC_1 is not a probability"),
    ("image_id,melanoma\nISIC_1,inf\n", "line 2: melanoma 'inf' of ISIC_1 is not a probability"),
    ("image_id,melanoma\nISIC_1,\n", "line 2: melanoma '' of ISIC_1 is not a probability"),
    ("image_id,melanoma\n,0.5\n", "line 2: empty image_id"),
    ("image_id,probability\nISIC_1,0.5\n", "not a predictions file: no melanoma column"),
    ("image_id,melanoma,Melanoma\nISIC_1,0.5,0.5\n", "line 1: column 'melanoma' appears twice"),
    ("image_id,melanoma\n", "no predictions (only a header)"),
])
def test_a_compare_file_is_refused_by_row(tmp_path, text, message):
    from dermogaze.errors import DataError
    from dermogaze.evaluation.evaluate import read_predictions_csv

    path = tmp_path / "other.csv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_predictions_csv(path)
    assert str(err.value).startswith(f"{path}: {message}")


def test_a_compare_file_with_a_byte_order_mark_is_read(tmp_path):
    from dermogaze.evaluation.evaluate import read_predictions_csv

    path = tmp_path / "other.csv"
    path.write_bytes("\ufeffimage_id,melanoma,label\r\nISIC_1,0.000000,0\r\nISIC_2,1,1\r\n".encode())
    assert read_predictions_csv(path) == {"ISIC_1": 0.0, "ISIC_2": 1.0}


def test_evaluate_refuses_a_bad_compare_file_before_the_model_runs(pipeline_tiny_run, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("image_id,melanoma\nISIC_1,nan\n")
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(pipeline_tiny_run / "best.pt"), "--out", str(out), "--compare",
                 str(other), "--no-progress"]) == 2
    assert f"{other}: line 2: melanoma 'nan' of ISIC_1" in capsys.readouterr().err
    assert not out.exists()
