# metarec: `make test` and `make demo` set up .venv on first use (see scripts/setup_env.sh).
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

export PYTHON TORCH_SPEC

.PHONY: setup test demo bench-smoke clean

setup:
	@bash scripts/setup_env.sh $(VENV)

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	@bash scripts/demo.sh $(VENV)

bench-smoke: setup
	$(VENV)/bin/python benchmarks/ml100k_baselines.py --smoke
	$(VENV)/bin/python benchmarks/quality_ml100k.py --smoke
	$(VENV)/bin/python benchmarks/full_ranking_lastfm.py --smoke
	$(VENV)/bin/python benchmarks/ranking_vs_cf.py --smoke
	$(VENV)/bin/python benchmarks/oracle_gap.py --smoke
	$(VENV)/bin/python benchmarks/oracle_scaling.py --smoke
	$(VENV)/bin/python benchmarks/convergence.py --smoke
	$(VENV)/bin/python benchmarks/tuned_ml100k.py --smoke
	$(VENV)/bin/python benchmarks/large_models_ml100k.py --smoke
	$(VENV)/bin/python benchmarks/transformer_cost.py --smoke
	$(VENV)/bin/python benchmarks/speed.py --smoke
	$(VENV)/bin/python benchmarks/peers.py --smoke
	$(VENV)/bin/python benchmarks/serving.py --smoke
	$(VENV)/bin/python benchmarks/memory_stability.py --smoke
	$(VENV)/bin/python benchmarks/chaos.py --smoke

clean:
	rm -rf $(VENV) .pytest_cache
