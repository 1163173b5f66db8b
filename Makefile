# Every target uses the virtual environment .venv at the repo root (created by `make setup`).
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: setup demo test test-fast lint bench-step bench-kernels bench-learning

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first: a CPU build (a bare `torch` requirement would pull a multi-GB CUDA build)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,ray]"
	touch .venv/.installed

setup: .venv/.installed

demo: setup  ## the main job: train the embedded default model with coupled credit, evaluate before/after
	$(PY) examples/train_grpo.py --config examples/configs/grpo_arithmetic_coupled.yaml

test: setup  ## every test, the slow end-to-end ones included
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

lint: setup
	.venv/bin/ruff check .

bench-step: setup  ## step time of AttnGRPOTrainer vs trl.GRPOTrainer on CPU with the default model
	$(PY) benchmarks/bench_step_time.py

bench-kernels: setup  ## GPU: statistics kernels vs SDPA (see benchmarks/bench_attention_stats.py)
	$(PY) benchmarks/bench_attention_stats.py

bench-learning: setup  ## every credit strategy x 3 seeds x 2 tasks (about 2 h on 2 CPU cores; resumes)
	$(PY) benchmarks/learning/sweep.py --jobs 2 --threads 1
