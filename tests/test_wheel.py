"""The package as a user installs it: a wheel, into a fresh virtual environment, run outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from dermogaze.experiments.demo.report import DEMO_FLOORS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "src" / "dermogaze" / "configs"
PRESETS = sorted(p.name for p in CONFIGS.glob("*.yaml"))
SWEEP_SPACES = sorted(p.relative_to(CONFIGS).as_posix() for p in (CONFIGS / "sweeps").glob("*.yaml"))


def _run(argv: list[str], cwd: Path, timeout: int = 600, threads: int | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel --no-deps`` of the checkout (no build isolation: the registry is not needed)."""
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
         cwd=out)
    (built,) = out.glob("dermogaze-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel; its dependencies come from the running environment
    through a ``.pth`` line (that environment's folder only: its editable install of dermogaze is not loaded)."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=env_dir).stdout.strip())
    (purelib / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         cwd=env_dir)
    return env_dir


def test_wheel_ships_every_preset_and_no_benchmark(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert len(PRESETS) >= 9
    assert sorted(n.removeprefix("dermogaze/configs/") for n in names if n.startswith("dermogaze/configs/")) == sorted(
        PRESETS + SWEEP_SPACES
    )
    assert not [n for n in names if "bench" in n.lower()], "benchmark code in the wheel"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_outside_the_checkout_to_its_floors(installed, tmp_path):
    """The wheel, outside the checkout: `dermogaze demo` end to end on its own configuration reaches the floors of
    issue 5 on the synthetic test split (on the CPU, whose kernels are deterministic; one thread, as each test
    worker)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bin_dir = installed / "bin"
    where = _run([str(bin_dir / "python"), "-c", "import dermogaze; print(dermogaze.__file__)"], cwd=elsewhere)
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout  # the wheel, not the checkout
    listed = _run([str(bin_dir / "dermogaze"), "model", "list"], cwd=elsewhere)
    assert listed.stdout.split()[:2] == ["vgg", "vgg_gap"] and "deco_gap_3" in listed.stdout.split()

    out = tmp_path / "demo"
    demo = _run([str(bin_dir / "dermogaze"), "demo", "--out", str(out), "--device", "cpu", "--no-progress"],
                cwd=elsewhere, threads=1)
    assert f"report: {out / 'report.md'}" in demo.stdout
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    auc, jaccard = metrics["diagnosis"]["auc"], metrics["structures"]["jaccard_lesion_skin"]
    print(f"demo: test AUC {auc:.3f}, Jaccard lesion+skin {jaccard:.3f}")
    assert auc >= DEMO_FLOORS["auc"] and jaccard >= DEMO_FLOORS["jaccard_lesion_skin"]
    # the preset trains with the attention supervision: its gazes land on what they are matched to (issue 11)
    pointing = metrics["explanation"]["pointing_matched"]["per_structure"]
    assert pointing["lesion"] >= 0.9 and pointing["skin"] >= 0.9, pointing
    assert (out / "train" / "best.pt").is_file()
    report = (out / "report.md").read_text()
    assert "attention supervision λ = 1 (reached over 4 epochs), matching on the gazes too, " in report
    assert "repeat-factor sampling t = 1, " in report
    assert len(list((out / "explain").glob("*_gazes.png"))) == 4
    # The benchmark belongs to a checkout: outside one, a clear message rather than a path into site-packages.
    bench = subprocess.run([str(bin_dir / "dermogaze"), "bench"], cwd=elsewhere, capture_output=True, text=True,
                           timeout=300)
    assert bench.returncode == 2 and "benchmarks/bench_train.py" in bench.stderr and "Traceback" not in bench.stderr
