"""The one-command demo: data reuse and the report (the whole demo reaching its floors: tests/test_wheel.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SMALL_RECIPE = {"counts": {"Training": 6, "Validation": 3, "Test_v2": 3}, "image_size": [48, 40], "seed": 0,
                "cache_size": 40}


def test_demo_data_is_reused_when_the_recipe_matches(tmp_path, monkeypatch):
    import dermogaze.experiments.demo.run as demo
    from dermogaze.data.cache import load_info
    from dermogaze.experiments.demo.run import prepare_demo_data

    calls = []
    real = demo.write_synthetic_isic
    monkeypatch.setattr(demo, "write_synthetic_isic", lambda *a, **k: calls.append(k) or real(*a, **k))
    cache = prepare_demo_data(tmp_path, SMALL_RECIPE, progress=False)
    assert len(calls) == 1 and load_info(cache)["counts"] == {"train": 6, "val": 3, "test": 3}
    info_mtime = (cache / "info.json").stat().st_mtime_ns

    assert prepare_demo_data(tmp_path, SMALL_RECIPE, progress=False) == cache
    assert len(calls) == 1  # reused: nothing synthesised or prepared again
    assert (cache / "info.json").stat().st_mtime_ns == info_mtime

    changed = {**SMALL_RECIPE, "counts": {"Training": 4, "Validation": 3, "Test_v2": 3}}
    prepare_demo_data(tmp_path, changed, progress=False)
    assert len(calls) == 2 and load_info(cache)["counts"]["train"] == 4

    (cache / "info.json").unlink()  # a broken cache is rebuilt, not reused
    prepare_demo_data(tmp_path, changed, progress=False)
    assert len(calls) == 3 and load_info(cache)["counts"]["train"] == 4


def test_report_links_every_figure(pipeline_cache, pipeline_tiny_run, tmp_path):
    from dermogaze.config import load_config
    from dermogaze.evaluation.evaluate import evaluate_checkpoint
    from dermogaze.evaluation.plots import plot_explanation_bars, plot_training_curves
    from dermogaze.experiments.demo.report import compared_explanations, write_report
    from dermogaze.explain.run import run_explain
    from dermogaze.files import read_jsonl

    best = pipeline_tiny_run / "best.pt"
    evaluation = evaluate_checkpoint(best, pipeline_cache, "test", tmp_path / "eval", progress=False)
    records = run_explain(best, ["test"], tmp_path / "explain", data=pipeline_cache, limit=2, progress=False)
    history = read_jsonl(pipeline_tiny_run / "metrics.jsonl")
    curves = plot_training_curves(history, tmp_path / "training_curves.png")
    runs = compared_explanations(evaluation["metrics"]["explanation"], tmp_path / "no_results.json")
    bars = plot_explanation_bars(runs, tmp_path / "explanation.png")
    report = write_report(
        tmp_path, metrics=evaluation["metrics"], history=history, records=records,
        timings={"train": 1.0, "total": 2.0}, config=load_config("tiny").to_dict(), recipe=SMALL_RECIPE,
        files={"curves": curves, "explanation": bars, **evaluation["files"], "explain_dir": tmp_path / "explain"},
        explanation_runs=runs,
    )
    text = report.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    # curves, confusion matrix, ROC, reliability diagram, explanation bars, and a gaze + mask figure per image
    assert len(links) == 5 + 2 * len(records)
    ex = evaluation["metrics"]["explanation"]
    assert "## Explanations measured (docs/design.md §6b)" in text
    assert f"| *overall* | | {ex['pointing_matched']['overall']:.3f} |" in text
    for link in links:
        assert not Path(link).is_absolute() and (tmp_path / link).is_file(), link
    auc = evaluation["metrics"]["diagnosis"]["auc"]
    assert f"diagnosis AUC **{auc:.3f}**" in text
    assert "- precision: float32 (training, evaluation and explanations" in text  # the tiny preset's train.amp off
    lo, hi = evaluation["metrics"]["diagnosis_ci"]["auc"]
    assert f"{auc:.3f} [{lo:.2f}, {hi:.2f}]" in text  # the interval in the clinical table
    assert "specificity at sensitivity 89%" in text and "before temperature scaling" in text
    for rec in records:
        assert rec["image_id"] in text
    from dermogaze.data.provenance import describe
    from dermogaze.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(best)
    assert f"- trained on: {describe(ckpt['training_data'])}; out-of-distribution threshold " in text
    assert f"threshold {ckpt['ood']['threshold']:.2f} (the validation images' 95th percentile" in text


def test_the_report_line_on_the_training_data():
    from dermogaze.data.provenance import unknown_training_data
    from dermogaze.experiments.demo.report import provenance_markdown

    data = {**unknown_training_data(["lesion", "skin"]), "name": "cache", "kind": "synthetic",
            "size": {"train": 320, "val": 80, "test": 160}, "fingerprint": "0123456789abcdef"}
    scores = [{"distance": 3.0, "threshold": 5.0, "out_of_distribution": False},
              {"distance": 6.0, "threshold": 5.0, "out_of_distribution": True}]
    records = [{"training_data": data, "ood": s} for s in scores]
    line = provenance_markdown(None, records)  # from the records
    assert line == ("- trained on: synthetic collection 'cache' (custom structures; 320 train / 80 val / 160 test "
                    "images; fingerprint 0123456789abcdef); out-of-distribution threshold 5.00 (the validation images' "
                    "95th percentile of the Mahalanobis distance of the pooled encoder features), exceeded by 1 of the "
                    "2 explained test images")
    assert provenance_markdown(None, []) == (
        "- trained on: unknown (a checkpoint written before dermogaze recorded its training data)")


def test_report_names_the_options_beyond_the_paper():
    from dermogaze.config import load_config
    from dermogaze.experiments.demo.report import _supervision_text

    assert _supervision_text(load_config("tiny").to_dict()) == ""  # the paper's loss, every image once
    demo = load_config("demo").to_dict()
    assert _supervision_text(demo) == (
        "attention supervision λ = 1 (reached over 4 epochs), matching on the gazes too, repeat-factor sampling t = 1, "
    )
    plain = load_config("demo", ["loss.attention_warmup=0", "loss.attention_matching=false", "loss.attention=0.5",
                                 "train.repeat_threshold=0"]).to_dict()
    assert _supervision_text(plain) == "attention supervision λ = 0.5, "
    assert _supervision_text(load_config("tiny", ["loss.class_matching=true"]).to_dict()) == (
        "matching on the structure classifier too, ")


def test_compared_explanations_average_the_benchmark_seeds(tmp_path):
    import json

    from dermogaze.experiments.demo.report import compared_explanations, explanation_markdown

    def section(pointing, lift):
        return {"pointing_matched": {"per_structure": {"lesion": pointing, "skin": 1.0}},
                "relevance_lift": {"per_structure": {"lesion": lift, "skin": None}}}

    bench = {"lambda": 2.0, "seeds": [0, 1], "runs": {
        "0/0": section(0.2, 1.0), "0/1": section(0.4, 1.2), "2/0": section(0.9, 3.0), "2/1": section(1.0, None)}}
    (tmp_path / "results.json").write_text(json.dumps(bench))
    own = section(0.5, 1.1)
    runs = compared_explanations(own, tmp_path / "results.json", attention=1.0)
    base, lam = "λ = 0, mean of 2 seeds (benchmark)", "λ = 2, mean of 2 seeds (benchmark)"
    assert list(runs) == ["this demo (λ = 1)", base, lam]
    assert runs[base]["pointing_matched"]["per_structure"]["lesion"] == pytest.approx(0.3)
    lam = runs[lam]
    assert lam["relevance_lift"]["per_structure"] == {"lesion": 3.0, "skin": None}  # seeds without a value left out
    assert compared_explanations(own, tmp_path / "absent.json") == {"this demo (λ = 0)": own}
    # the supervised column names the loss options the benchmark trained it with (inert at λ = 0)
    bench["overrides"] = ["loss.attention_warmup=4", "loss.attention_matching=true", "train.epochs=14"]
    (tmp_path / "results.json").write_text(json.dumps(bench))
    assert list(compared_explanations(own, tmp_path / "results.json"))[1:] == [
        base, "λ = 2 (attention_warmup=4, attention_matching=true), mean of 2 seeds (benchmark)"]
    # a supervised model matched on its gazes: its figures under the paper's matching (masks only) are given too
    for key, lesion in (("2/0", 0.8), ("2/1", 0.7)):
        bench["runs"][key]["pointing_masks_matched"] = {"per_structure": {"lesion": lesion, "skin": 1.0}}
    (tmp_path / "results.json").write_text(json.dumps(bench))
    runs = compared_explanations(own, tmp_path / "results.json")
    sup = "λ = 2 (attention_warmup=4, attention_matching=true), mean of 2 seeds (benchmark)"
    assert runs[sup]["pointing_masks_matched"]["per_structure"]["lesion"] == pytest.approx(0.75)
    assert runs[base]["pointing_masks_matched"] == runs[base]["pointing_matched"]  # older results: the same
    text = explanation_markdown({"explanation": {"pointing_matched": None}}, runs)
    assert f"Under the paper's matching (masks only), {sup}: lesion 0.750, skin 1.000." in text
    assert "masks only), λ = 0" not in text and "masks only), this demo" not in text


# `dermogaze demo` end to end, reaching its floors: tests/test_wheel.py runs it as a user installs it.
