"""Shared fixtures: a tiny hand-crafted collection in the official ISIC 2017 layout.

The collection is written here with Pillow and json (not with ``dermogaze.data.synth``), so the
reader is tested against files whose every pixel is known:

* images are 32×32 PNGs of one colour each (the validation image ``ISIC_0000011`` is a ``.JPG``);
* superpixels are the sixteen 8×8 blocks, block ``b = 4 * (row // 8) + col // 8`` carrying index
  ``300 + b`` (so the official decoding needs the G byte: 300 = 44 + (1 << 8));
* every features JSON lists ``SP_COUNT = 316`` values per feature, 0 except the listed blocks;
* the lesion mask is the square of rows and columns 4..27;
* tolerated variations: ``_Segmentation.png`` capitalisation (``ISIC_0000012``), ``.JPG``, the
  test Data folder nested in a folder of its own name, metadata CSVs in the Data folders.

Also ``one_thread``, for modules of tiny-tensor tests (``pytestmark = pytest.mark.usefixtures("one_thread")``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermogaze.allocator import keep_freed_memory

TINY_SIDE = 32
SP_BASE = 300
SP_COUNT = SP_BASE + 16
LESION_SLICE = slice(4, 28)

# id, colour, melanoma, seborrheic keratosis, {feature: {block: value}}
TINY_SPLITS: dict[str, list[tuple[str, tuple[int, int, int], str, str, dict[str, dict[int, float]]]]] = {
    "Training": [
        ("ISIC_0000001", (200, 100, 50), "1.0", "0.0", {"pigment_network": {5: 0.6}}),
        ("ISIC_0000002", (100, 150, 200), "0.0", "1.0", {"milia_like_cyst": {3: 1.0}}),
        ("ISIC_0000003", (50, 50, 50), "0.0", "0.0", {"milia_like_cyst": {6: 0.4}}),
        (
            "ISIC_0000004",
            (250, 240, 10),
            "1.0",
            "0.0",
            {"pigment_network": {5: 1.0}, "negative_network": {10: 1.0}, "streaks": {10: 1.0}},
        ),
    ],
    "Validation": [
        ("ISIC_0000011", (120, 80, 60), "1.0", "0.0", {"streaks": {0: 1.0}}),
        ("ISIC_0000012", (60, 80, 120), "0.0", "0.0", {}),
    ],
    "Test_v2": [
        ("ISIC_0000021", (90, 90, 140), "0.0", "0.0", {"pigment_network": {15: 1.0}}),
    ],
}
FEATURES = ("pigment_network", "negative_network", "milia_like_cyst", "streaks")


def randomise_batch_norm(module: torch.nn.Module) -> None:
    """Give every BatchNorm2d of ``module`` non-trivial affine parameters and running statistics (in place),
    so that copying, loading or fusing them is actually tested."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)


def superpixel_rgb(side: int = TINY_SIDE) -> np.ndarray:
    """RGB map of the 8×8-block superpixels (index ``300 + block``) in the official encoding."""
    r, c = np.mgrid[0:side, 0:side]
    index = SP_BASE + 4 * (r // 8) + (c // 8)
    return np.stack([index & 255, (index >> 8) & 255, (index >> 16) & 255], axis=-1).astype(np.uint8)


def write_tiny_isic(root: Path, *, annotations: bool = True, splits: dict | None = None) -> Path:
    """Write the tiny collection under ``root`` (see module docstring) and return ``root``."""
    splits = TINY_SPLITS if splits is None else splits
    root.mkdir(parents=True, exist_ok=True)
    for official, rows in splits.items():
        prefix = f"ISIC-2017_{official}"
        data = root / f"{prefix}_Data"
        if official == "Test_v2":
            data = data / data.name  # unzipped into a folder of the same name
        data.mkdir(parents=True)
        (data / f"{prefix}_Data_metadata.csv").write_text(
            "image_id,age_approximate,sex\n" + "".join(f"{r[0]},55,female\n" for r in rows)
        )
        lines = ["image_id,melanoma,seborrheic_keratosis"]
        for image_id, colour, mel, sk, feats in rows:
            lines.append(f"{image_id},{mel},{sk}")
            pixels = np.full((TINY_SIDE, TINY_SIDE, 3), colour, np.uint8)
            if image_id == "ISIC_0000011":
                Image.fromarray(pixels).save(data / f"{image_id}.JPG", quality=100)
            else:
                Image.fromarray(pixels).save(data / f"{image_id}.png")
            if not annotations:
                continue
            Image.fromarray(superpixel_rgb()).save(data / f"{image_id}_superpixels.png")
            part1 = root / f"{prefix}_Part1_GroundTruth"
            part2 = root / f"{prefix}_Part2_GroundTruth"
            part1.mkdir(exist_ok=True)
            part2.mkdir(exist_ok=True)
            lesion = np.zeros((TINY_SIDE, TINY_SIDE), np.uint8)
            lesion[LESION_SLICE, LESION_SLICE] = 255
            suffix = "_Segmentation.png" if image_id == "ISIC_0000012" else "_segmentation.png"
            Image.fromarray(lesion).save(part1 / f"{image_id}{suffix}")
            values = {name: [0.0] * SP_COUNT for name in FEATURES}
            for name, blocks in feats.items():
                for block, value in blocks.items():
                    values[name][SP_BASE + block] = value
            (part2 / f"{image_id}_features.json").write_text(json.dumps(values))
        (root / f"{prefix}_Part3_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return root


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs one worker per core) each worker computes on one thread: two
    workers of two threads each on two cores would fight over them. And glibc's malloc keeps freed memory, as in
    every command."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    keep_freed_memory()  # as every command does (dermogaze.allocator): the in-process tests run as the command line


#: The test modules of the longest durations (``pytest --durations``: the wheel's demo ~160 s, the sweeps ~80 s, two
#: processes ~45 s, table3 ~35 s, ONNX export ~35 s, the bench ~30 s), heaviest first. Under ``--dist loadscope`` a
#: module is one unit of work; one of these started last would leave the other worker idle for its whole length.
HEAVIEST_MODULES = ("test_wheel.py", "experiments/test_sweep.py", "training/test_distributed.py",
                    "experiments/test_table3.py", "apps/test_export.py", "experiments/test_bench.py")


def _schedule_rank(item: pytest.Item) -> tuple[int, bool]:
    module = Path(str(item.path)).relative_to(Path(__file__).parent).as_posix()
    rank = HEAVIEST_MODULES.index(module) if module in HEAVIEST_MODULES else len(HEAVIEST_MODULES)
    return rank, item.get_closest_marker("slow") is None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The heaviest modules first, then the slow tests (in their order), so that under pytest-xdist the longest
    start at once and the short ones fill the other workers around them."""
    items.sort(key=_schedule_rank)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is fastest and immune to oversubscribed shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_isic_factory() -> Callable[..., Path]:
    """The writer of the tiny collection, for tests that need variants of it."""
    return write_tiny_isic


@pytest.fixture
def tiny_isic_dir(tmp_path: Path) -> Path:
    """A fresh copy of the tiny collection with Part 1 and Part 2 ground truth."""
    return write_tiny_isic(tmp_path / "isic")


@pytest.fixture(scope="session")
def realdata_dir() -> Path:
    """``../shared/realdata`` next to the repository (real ISIC files); skips the test if absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
    if not path.is_dir():
        pytest.skip(f"real ISIC files not found at {path} (see shared/realdata/README.md)")
    return path


# ----------------------------------------------------------------------------------------------
# Pipeline fixtures (train / evaluate / demo / distributed tests): a small synthetic dataset and a
# tiny trained run, each created once per session.
# ----------------------------------------------------------------------------------------------

#: The synthetic dataset of the pipeline tests: tiny, so that it is written and prepared in seconds.
PIPELINE_COUNTS = {"Training": 24, "Validation": 8, "Test_v2": 8}
PIPELINE_IMAGE_SIZE = (64, 48)  # (width, height) of the written JPEGs
PIPELINE_CACHE_SIZE = 40  # prepared size; configs/tiny.yaml center-crops 32 px


@pytest.fixture(scope="session")
def pipeline_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny synthetic ISIC 2017 folder and its prepared cache (24/8/8 images), created once per session.

    Returns:
        ``{"isic": folder in the official layout, "cache": prepared cache folder}``.
    """
    from dermogaze.data.prepare import prepare
    from dermogaze.data.synth import write_synthetic_isic

    root = tmp_path_factory.mktemp("pipeline_data")
    isic = write_synthetic_isic(
        root / "isic", counts=PIPELINE_COUNTS, image_size=PIPELINE_IMAGE_SIZE, seed=0, progress=False
    )
    cache = root / "cache"
    prepare(isic, cache, size=PIPELINE_CACHE_SIZE, progress=False)
    return {"isic": Path(isic), "cache": cache}


@pytest.fixture(scope="session")
def pipeline_cache(pipeline_data: dict[str, Path]) -> Path:
    """The prepared cache of :func:`pipeline_data` (splits ``train``/``val``/``test``)."""
    return pipeline_data["cache"]


@pytest.fixture(scope="session")
def pipeline_tiny_run(pipeline_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-epoch run of ``configs/tiny.yaml`` on :func:`pipeline_cache`, trained once.

    Returns:
        The run folder (``config.yaml``, ``metrics.jsonl``, ``last.pt``, ``best.pt``).
    """
    from dermogaze.config import load_config
    from dermogaze.training import train

    cfg = load_config("tiny", [f"data.cache={pipeline_cache}"])
    run = tmp_path_factory.mktemp("pipeline_runs") / "tiny"
    # one thread whichever test builds it first: the tests that retrain and compare at 1e-6 pin one thread too
    # (``one_thread``), as the reduction order of the CPU kernels depends on the thread count
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, run, progress=False)
    finally:
        torch.set_num_threads(previous)
    return run


@pytest.fixture(scope="session")
def crafted_gaze_checkpoint(pipeline_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ``configs/tiny.yaml`` network (T = 2) whose diagnosis reads gaze 1 alone, as a checkpoint.

    The diagnosis top's weights are zero except those of gaze 1's pool ``GAP(X̃'_1)``, which all add
    ``50 / C`` to the melanoma logit: P(melanoma) = ``sigmoid(50 · mean(GAP(X̃'_1)))`` with every
    gaze, exactly 0.5 without gaze 1, and unchanged without gaze 2. Calibration: temperature 1,
    threshold 0.6 (so removing gaze 1 turns a melanoma decision benign). Structures and normalisation
    are those of :func:`pipeline_cache`.
    """
    from dermogaze.config import load_config
    from dermogaze.data.cache import load_info
    from dermogaze.models import build_model
    from dermogaze.training.checkpoint import checkpoint_state, save_checkpoint

    cfg = load_config("tiny", [f"data.cache={pipeline_cache}"])
    torch.manual_seed(0)
    model = build_model(cfg.model.name, steps=cfg.model.steps, image_size=cfg.model.image_size,
                        width=cfg.model.width, batch_norm=cfg.model.batch_norm).eval()
    head = model.diagnosis.head
    channels = head.gaze_channels
    first_pool = head.fc.in_features - cfg.model.steps * channels  # GAP(blocks 4-5) first, then the gaze pools
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.zero_()
        head.fc.weight[1, first_pool : first_pool + channels] = 50.0 / channels
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = checkpoint_state(
        cfg, model, optimizer, torch.amp.GradScaler("cpu", enabled=False), load_info(pipeline_cache), epoch=1,
        best_val=None, best_epoch=1, rngs=[], metrics={},
        calibration={"temperature": 1.0, "threshold": 0.6, "threshold_rule": "0.6"},
    )
    return save_checkpoint(tmp_path_factory.mktemp("crafted") / "best.pt", state)
