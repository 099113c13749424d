"""The real-data tier: the command line on 800 real ISIC images with their real ISIC 2018 Task 1-2 masks.

The collection is ``../shared/realdata/isic2018-dev`` beside the repository, in the ISIC 2018 Task 1-2 layout
(docs/design.md §2b): 800 real 256×256 dermoscopic images, each with its lesion mask and its five attribute masks,
and ``labels.csv`` (``image_id,melanoma``). Every test of this folder is marked ``realdata`` and is skipped, with the
reason, only when that folder is absent: a missing file inside it, or a missing official scorer, fails.

What runs once per session (:func:`real_cache`, :func:`real_run`): ``dermogaze data prepare`` of all 800 images at
:data:`CACHE_SIZE` px, then a short training of the ``tiny`` preset on that cache (one epoch of a few batches, a
:data:`IMAGE_SIZE` px center crop). The tests check the cache against the mask files themselves
(``test_prepare_real.py``) and run ``evaluate``, ``explain``, ``predict`` and the official ISIC 2018 Task 2 scorer
on the trained checkpoint (``test_pipeline_real.py``). Everything goes through the CLI in this process
(:func:`dermogaze.cli.main`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The collection, relative to the repository root (CI has the same copy beside the clone).
REALDATA = "../shared/realdata/isic2018-dev"
COLLECTION = (ROOT / REALDATA).resolve()
LABELS = COLLECTION / "labels.csv"
#: The folders of the ISIC 2018 Task 1-2 layout inside the collection.
IMAGES = COLLECTION / "ISIC2018_Task1-2_Training_Input"
TASK1 = COLLECTION / "ISIC2018_Task1_Training_GroundTruth"
TASK2 = COLLECTION / "ISIC2018_Task2_Training_GroundTruth_v3"
#: The five attributes in the order of the seven-structure set (docs/design.md §1), written out here.
ATTRIBUTES = ("pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules")

CACHE_SIZE = 64  # prepare --size: small, so that the whole collection is prepared in seconds
IMAGE_SIZE = 32  # the network's center crop of the cached squares (so explain and predict place a crop back)
#: The short training: the tiny preset, one epoch cut to a few batches.
TRAIN_OVERRIDES = ("train.epochs=1", "train.max_train_batches=3", "train.batch_size=8",
                   f"model.image_size={IMAGE_SIZE}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``realdata``; skip them, saying why, when the collection is absent."""
    here = Path(__file__).parent
    absent = None if COLLECTION.is_dir() else pytest.mark.skip(
        reason=f"real-data tier: {REALDATA} not found beside the repository ({COLLECTION}); "
        "see tests/realdata/conftest.py"
    )
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.realdata)
            if absent is not None:
                item.add_marker(absent)


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dermogaze data prepare --isic COLLECTION --labels labels.csv --size 64``, once per session."""
    from dermogaze.cli import main

    out = tmp_path_factory.mktemp("realdata") / "cache"
    argv = ["data", "prepare", "--isic", str(COLLECTION), "--labels", str(LABELS), "--out", str(out),
            "--size", str(CACHE_SIZE), "--no-progress"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def real_run(real_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dermogaze train --preset tiny`` on :func:`real_cache` (one short epoch), once per session; the run folder."""
    from dermogaze.cli import main

    run = tmp_path_factory.mktemp("realdata_run") / "tiny"
    argv = ["train", "--data", str(real_cache), "--preset", "tiny", "--out", str(run), "--seed", "0",
            "--device", "cpu", "--no-progress"]
    for override in TRAIN_OVERRIDES:
        argv += ["-o", override]
    assert main(argv) == 0
    return run
