"""What a model was trained on (``dermogaze.data.provenance``): the kind prepare records, the fingerprint, the line
that describes it and the demonstration note."""

from __future__ import annotations

import json
import shutil

import pytest

from dermogaze.data.cache import load_info
from dermogaze.data.prepare import prepare
from dermogaze.data.provenance import (
    DEMONSTRATION_NOTE,
    check_training_data,
    collection_kind,
    demonstration_note,
    describe,
    fingerprint,
    training_collection,
    unknown_training_data,
)
from dermogaze.structures import ISIC2017_STRUCTURES


def test_prepare_records_synthetic_and_real_collections(pipeline_data, tiny_isic_dir, tmp_path):
    synthetic = load_info(pipeline_data["cache"])
    assert synthetic["kind"] == "synthetic" and collection_kind(synthetic) == "synthetic"
    real = prepare(tiny_isic_dir, tmp_path / "cache", size=16, progress=False)  # written by hand, not by synth
    assert real["kind"] == "real" and collection_kind(real) == "real"


def test_a_cache_prepared_before_the_kind_asks_its_collection(pipeline_data, tiny_isic_dir):
    info = {k: v for k, v in load_info(pipeline_data["cache"]).items() if k != "kind"}
    assert collection_kind(info) == "synthetic"  # its source folder holds the generator's sidecars
    assert collection_kind({**info, "source": str(tiny_isic_dir)}) == "real"
    assert collection_kind({**info, "source": str(tiny_isic_dir / "gone")}) == "unknown"
    assert collection_kind({**info, "source": None}) == "unknown"


def test_training_collection_describes_the_cache(pipeline_data):
    cache = pipeline_data["cache"]
    info = load_info(cache)
    data = training_collection(cache, info)
    assert check_training_data(data) is None
    assert data["name"] == cache.name and data["kind"] == "synthetic" and data["structure_set"] == "isic2017"
    assert data["structures"] == list(ISIC2017_STRUCTURES) and data["size"] == {"train": 24, "val": 8, "test": 8}
    assert data["source"] == str(pipeline_data["isic"].resolve())
    line = describe(data)
    assert line == (f"synthetic collection '{cache.name}' (isic2017 structures; 24 train / 8 val / 8 test images; "
                    f"fingerprint {data['fingerprint']})")


def test_fingerprint_follows_the_content_not_the_preparation(tiny_isic_dir, tmp_path):
    a = prepare(tiny_isic_dir, tmp_path / "a", size=16, progress=False)
    b = prepare(tiny_isic_dir, tmp_path / "b", size=16, progress=False)
    assert a["token"] != b["token"]  # two preparations...
    fa = fingerprint(tmp_path / "a", a)
    assert len(fa) == 16 and fa == fingerprint(tmp_path / "b", b)  # ...of the same content
    assert fingerprint(tmp_path / "c", prepare(tiny_isic_dir, tmp_path / "c", size=20, progress=False)) != fa
    # another image in a split: another fingerprint
    d = tmp_path / "d"
    shutil.copytree(tmp_path / "a", d)
    ids = json.loads((d / "val" / "ids.json").read_text())
    ids["ids"][0] = "ISIC_9999999"
    (d / "val" / "ids.json").write_text(json.dumps(ids))
    assert fingerprint(d, a) != fa


def test_an_unknown_training_collection_reads_as_unknown():
    data = unknown_training_data(ISIC2017_STRUCTURES)
    assert check_training_data(data) is None
    assert data["kind"] == data["name"] == "unknown" and data["structure_set"] == "isic2017"
    assert describe(data).startswith("unknown (") and describe(None).startswith("unknown (")
    assert demonstration_note(data, None) is None


@pytest.mark.parametrize("image_kind, note", [(None, DEMONSTRATION_NOTE), ("real", DEMONSTRATION_NOTE),
                                              ("unknown", DEMONSTRATION_NOTE), ("synthetic", None)])
def test_a_synthetic_model_on_an_image_that_is_not_synthetic_says_so(image_kind, note):
    synthetic = {**unknown_training_data(ISIC2017_STRUCTURES), "kind": "synthetic"}
    assert demonstration_note(synthetic, image_kind) == note
    assert demonstration_note({**synthetic, "kind": "real"}, image_kind) is None
    assert DEMONSTRATION_NOTE == "trained on synthetic images: this diagnosis is a demonstration"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(kind="photo"), "kind"),
    (lambda d: d.pop("fingerprint"), "mapping of"),
    (lambda d: d.update(name=""), "name"),
    (lambda d: d.update(size={"train": -1}), "size"),
    (lambda d: d.update(structures=[1, 2]), "structures"),
])
def test_a_malformed_training_collection_is_named(edit, message):
    data = unknown_training_data(ISIC2017_STRUCTURES)
    edit(data)
    assert message in check_training_data(data)
