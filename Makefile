# One-command entry points; every target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
# pip warns about every missing local index folder; keep its real errors only.
QUIET  := 2>&1 | { grep -v "is ignored: it is neither" || true; }
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -ec

.PHONY: install train test clean

install: $(STAMP)

# torch is installed first and pinned (its CPU wheel lies on local disk); safety-gymnasium
# 1.0.0 is installed without its stale pins (gymnasium 0.28), its real deps come from setup.cfg.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip wheel setuptools $(QUIET)
	$(PIP) torch==2.13.0 $(QUIET)
	$(PIP) --no-deps safety-gymnasium==1.0.0 $(QUIET)
	$(PIP) -e ".[dev]" $(QUIET)
	$(PY) -c "import metacpo_rllib.envs.compat as c; c.apply(); import torch, ray, cvxpylayers, mlflow, safety_gymnasium"
	$(PY) -m metacpo_rllib.envs.fast_kernel  # compiles the fast step kernel once, into its cache
	$(MAKE) --no-print-directory gl
	touch $(STAMP)

# MuJoCo's offscreen renderer (`metacpo eval --video`) needs EGL or OSMesa. Where neither
# works, root on Debian/Ubuntu gets them from apt; elsewhere this only says what is missing
# (never an error: everything but videos works without them).
.PHONY: gl
gl:
	@$(PY) -m metacpo_rllib.render >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing libegl1 libosmesa6 (offscreen OpenGL for MuJoCo videos)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    { apt-get update -q && apt-get install -y -q libegl1 libgl1-mesa-dri libosmesa6; } \
	      >/dev/null 2>&1 || echo "note: apt-get could not install them"; \
	  fi; \
	  $(PY) -m metacpo_rllib.render || echo "note: no offscreen OpenGL: metacpo eval --video will not work"; \
	}

train: $(STAMP)
	$(VENV)/bin/metacpo train --family PointCircle --algo meta-cpo --iterations 30 \
	    --tasks-per-iteration 4 --episodes-per-task 8 --inner-delta 0.003 --eval-interval 30 \
	    --test-tasks 6 --adapt-steps 5 --eval-episodes 10

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# Experiment service (metacpo_rllib/experiments): `make ui` serves the MLflow UI of the embedded
# store (./mlflow.db, artifacts in ./mlruns) on 127.0.0.1:$(UI_PORT); `make compare` trains
# Meta-CPO, Meta-TRPO, CPO and TRPO on $(FAMILY) (3 seeds), adapts to held-out test tasks and
# writes compare_$(FAMILY)/comparison.{png,md,json} (also logged to MLflow).
.PHONY: ui compare
UI_PORT ?= 5000
FAMILY  ?= PointCircle

ui: $(STAMP)
	$(VENV)/bin/metacpo ui --port $(UI_PORT)

compare: $(STAMP)
	$(VENV)/bin/metacpo compare --family $(FAMILY) --seeds 0 1 2 --iterations 3

# A local multi-node Ray cluster on this machine (cluster/local_cluster.py; README "Run on a cluster"):
# `make cluster-up` starts a head and a worker node (`ray start --block`, each in its own
# process group, token auth on) plus an MLflow server, in the background; `make cluster-down`
# stops them by process group; `make cluster-demo` starts its own cluster, submits a short
# Meta-CPO job (PointNav, 2 EnvRunners, one per node) and stops everything again.
.PHONY: cluster-up cluster-down cluster-demo
CLUSTER_ROOT ?= /tmp/metacpo-cluster-$(shell id -u)

cluster-up: $(STAMP)
	$(PY) cluster/local_cluster.py --root $(CLUSTER_ROOT) up

cluster-down: $(STAMP)
	$(PY) cluster/local_cluster.py --root $(CLUSTER_ROOT) down

cluster-demo: $(STAMP)
	$(PY) cluster/local_cluster.py --root $(CLUSTER_ROOT)-demo demo

# Benchmarks (benchmarks/*.py; docs/BENCHMARKS.md): runs every benchmark in turn, writes its JSON
# to benchmarks/results and regenerates docs/BENCHMARKS.md from the JSON (~15 min on 2 cores).
# BENCH_RUNNERS: EnvRunner counts for the sampling and scaling benchmarks (e.g. "1 2 4 8 16").
.PHONY: bench
BENCH_RUNNERS ?=

bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(if $(strip $(BENCH_RUNNERS)),--runners $(BENCH_RUNNERS))

# Results (docs/RESULTS.md): `make results` runs the four-algorithm comparisons listed in
# RESULTS_RUNS (config:folder; PointCircle on its `test` and `test_tight` splits with the
# defaults: train at h = 10, evaluate training, adapt on held-out tasks at h = 5 with
# evaluation episodes; about half an hour each on 2 cores), writing
# docs/results/<folder>/comparison.json, then regenerates the page (the page lists the exact
# commands of the committed runs); `make results-page` only regenerates the page, its figures
# and the README's targets table from the JSON.
# RESULTS_FLAGS: extra `metacpo compare` flags, e.g. "--seeds 0 --max-concurrent 8".
.PHONY: results results-page
RESULTS_RUNS ?= pointcircle_compare:PointCircle pointcircle_compare_tight:PointCircle-tight
RESULTS_FLAGS ?=

results: $(STAMP)
	for run in $(RESULTS_RUNS); do \
	  $(VENV)/bin/metacpo compare --config tune_configs/$${run%%:*}.yaml \
	    --out docs/results/$${run##*:} --quiet $(RESULTS_FLAGS) || exit 1; \
	done
	$(PY) -m research.results_page --readme README.md

results-page: $(STAMP)
	$(PY) -m research.results_page --readme README.md
