# Two commands: `make train` trains the default run, `make test` runs the linters and the tests. The first use
# creates a virtual environment ($(VENV)) with the system python3 and installs torch (pinned, first), then the
# project with every extra; later uses find it installed (the stamp is newer than pyproject.toml) and start at once.
#
#   make train                                  # K2-MADDPG on VMAS balance, CPU (the default run)
#   make train ARGS="max_frames=6000 kpg.k=3"   # any overrides of `python -m kpg_lightning.train`
#   make test                                   # ruff, import contracts, then the whole test suite
#   make test PYTEST_ARGS="tests/test_kpg.py"   # a part of the suite
#   make test PYTEST_WORKERS=0                  # the suite in one process (pytest-xdist off)
#   make install VENV=/tmp/venv                 # only the environment, somewhere else

PYTHON ?= python3
VENV ?= .venv
ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist workers: the suite is mostly end-to-end runs in subprocesses, one core each; files stay whole on one
# worker (--dist loadfile), so a module's fixtures are built once
PYTEST_WORKERS ?= 2
TORCH ?= torch==2.13.0

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test
.DEFAULT_GOAL := install  # a bare `make` only installs; training is `make train`

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: PYTHON=$(PYTHON) is $$($(PYTHON) --version 2>&1); kpg_lightning needs Python >= 3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || \
		{ echo "error: $(PYTHON) cannot create virtual environments; install python3-venv (Debian/Ubuntu)" >&2; exit 1; }
	@echo "installing into $(VENV) (first use: a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)  # first: a looser order pulls a CUDA build of the newest torch
	$(BIN)/python -m pip install --quiet -e ".[all]"
	# marl-eval (the report's --marl-eval export is tested with its own loaders) without its dependencies: it pins
	# pandas==1.4.4 (no Python 3.11 wheel), neptune and old importlib-metadata/colorcet, which conflict with ours;
	# only its numpy-only data processing (marl_eval.utils) is used, whose colorama comes with the eval extra
	$(BIN)/python -m pip install --quiet --no-deps id-marl-eval==0.0.4
	@$(BIN)/python -c "import torch, torchrl, lightning, hydra, vmas; print('torch', torch.__version__, 'torchrl', torchrl.__version__, 'lightning', lightning.__version__)"
	@touch $@

train: $(STAMP)
	$(BIN)/python -m kpg_lightning.train $(ARGS)

# pytest's exit code 5 (no test collected) fails too: a suite that ran nothing has not passed
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	@rc=0; $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) || rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc
