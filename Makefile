# The README's commands. `make demo` and `make test` install everything they need into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dermogaze-installed

.PHONY: demo serve test test-fast test-realdata test-robustness bench lint clean

# torch/torchvision: the exact pair this machine installs from its disk (pyproject.toml allows the 2.14 series).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dermogaze demo

# The gaze viewer in the browser over the demo's model and its test images (written by `make demo`).
DEMO_RUN := runs/demo
serve: $(STAMP)
	@test -f $(DEMO_RUN)/train/best.pt || { echo "no demo model at $(DEMO_RUN)/train/best.pt: run 'make demo' first (a few minutes on a CPU)"; exit 2; }
	$(VENV)/bin/dermogaze serve --checkpoint $(DEMO_RUN)/train/best.pt --data $(DEMO_RUN)/data/cache

# pytest exits 5 when nothing is collected: that is not a failure of the project.
# The suite runs in one pytest-xdist worker per core (JOBS=1: one worker), each worker on one thread, a test module
# on one worker (--dist loadscope: its module fixtures are built once, 361 s -> 306 s on 2 cores); `make test` takes
# the modules in the order tests/conftest.py gives them, the heaviest first (--no-loadscope-reorder: xdist would
# start the modules of most tests first and the wheel's 160 s demo last, 349-370 s -> 290-300 s), `make test-fast`,
# without the slow tests, in xdist's order (95 s, 110 s in conftest's); the two tiers run in one process (the
# real-data tier shares one training, the robustness tier times servers).
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST = $(PY) -m pytest -q -n $(JOBS) --dist loadscope
# The sources are byte-compiled first: with PYTHONDONTWRITEBYTECODE set (as on this machine and CI) every process the
# suite starts (~70) would compile the package again (~0.3 s of CPU each).
define run_pytest
	$(PY) -m compileall -q src >/dev/null
	$(PYTEST) $(1); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc
endef

# The suite (unit, integration and the slow end-to-end tests); the real-data and robustness tiers have their own targets.
test: $(STAMP)
	$(call run_pytest,--no-loadscope-reorder -m "not robustness and not realdata")

test-fast: $(STAMP)
	$(call run_pytest,-m "not slow and not robustness and not realdata")

# The command line on the real ISIC images of ../shared/realdata/isic2018-dev (tests/realdata/; skipped when absent).
test-realdata: $(STAMP)
	$(call run_pytest,-m realdata -n 0)

# The command line against crafted inputs and faults, in subprocesses (tests/robustness/; CI runs it too).
test-robustness: $(STAMP)
	$(call run_pytest,-m robustness -n 0)

bench: $(STAMP)
	$(VENV)/bin/dermogaze bench

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf runs build .pytest_cache
