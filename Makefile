# Every target uses the virtual environment .venv at the repo root (created by `make setup`).
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: setup browser demo test test-fast lint bench-step bench-kernels bench-learning

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first: a CPU build (a bare `torch` requirement would pull a multi-GB CUDA build)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,ray,eval]"
	touch .venv/.installed

setup: .venv/.installed

# Headless Chromium renders the HTML rhythm page in the CLI tests. Installed with apt-get (Debian's `chromium`) when
# missing and running as root; otherwise the command to run is printed and that test skips (fails when CI=true).
browser:
	@if command -v chromium >/dev/null 2>&1; then \
	  echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the HTML screenshot test (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "chromium is missing: the HTML screenshot test will be skipped (and fails when CI=true);"; \
	  echo "install it with: sudo apt-get install -y chromium"; \
	  if [ "$$CI" = true ]; then exit 1; fi; \
	fi

demo: setup  ## the main job: train the embedded default model with coupled credit, evaluate before/after
	$(PY) examples/train_grpo.py --config examples/configs/grpo_arithmetic_coupled.yaml

test: setup browser  ## every test, the slow end-to-end ones included (-rs: the reason of any skip is printed)
	$(PY) -m pytest -q -rs tests

test-fast: setup browser
	$(PY) -m pytest -q -rs -m "not slow" tests

lint: setup
	.venv/bin/ruff check .

bench-step: setup  ## step time of AttnGRPOTrainer vs trl.GRPOTrainer on CPU with the default model
	$(PY) benchmarks/bench_step_time.py

bench-kernels: setup  ## GPU: statistics kernels vs SDPA (see benchmarks/bench_attention_stats.py)
	$(PY) benchmarks/bench_attention_stats.py

bench-learning: setup  ## every credit strategy x 3 seeds x 2 tasks (about 2 h on 2 CPU cores; resumes)
	$(PY) -m benchmarks.learning.sweep --jobs 2 --threads 1
