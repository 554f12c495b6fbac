# mammut_pl — `make help` lists every target.
SHELL := /bin/bash
PY := .venv/bin/python
MLFLOW_PORT ?= 5000
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_BACKEND ?= sqlite:///$(CURDIR)/mlflow-server.db
MLFLOW_ARTIFACTS ?= $(CURDIR)/mlartifacts
MLFLOW_WORKERS ?= 4
DEMO_DIR ?= data/demo
ARGS ?=
SWEEP_ARGS ?=
STRESS_RUNS ?= 3
STRESS_HOGS ?= 2
CKPT ?= $(lastword $(sort $(wildcard outputs/demo/*/checkpoints/last.ckpt)))

.PHONY: help setup data demo lit evaluate test test-fast test-stress mlflow-ui mlflow-server bench clean sweep-xattn sweep-loss sweep-encoder sweep-cross-task sweep-video sweep-cpe sweep-scaling

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-17s %s\n", $$1, $$2}'

setup: ## create .venv (torch 2.13.0 CPU first, the rest under constraints.txt); idempotent
	@bash scripts/setup_venv.sh

data: setup ## write the embedded demo data (all six datasets' real formats) to $(DEMO_DIR) if missing
	@$(PY) -m mammut_pl.data.demo --out $(DEMO_DIR)

demo: data ## set up, then pretrain a small MaMMUT on CPU (a few minutes), print retrieval, zero-shot top-1 + captions
	@$(PY) -m mammut_pl.fit experiment=demo data.root=$(DEMO_DIR)/webdata data.webdata.val_root=$(DEMO_DIR)/coco data.tokenizer=$(DEMO_DIR)/tokenizer.json $(ARGS)

lit: data ## LiT: train the text side against the locked image tower of CKPT (default: the latest `make demo` run)
	@$(PY) -m mammut_pl.fit experiment=lit model.init_from=$(CKPT) data.root=$(DEMO_DIR)/webdata data.webdata.val_root=$(DEMO_DIR)/coco data.tokenizer=$(DEMO_DIR)/tokenizer.json $(ARGS)

evaluate: setup ## zero-shot retrieval R@1/5/10 of CKPT (default: the latest `make demo` run) on its COCO test split
	@$(PY) -m mammut_pl.evaluate task=retrieval ckpt=$(CKPT) $(ARGS)

sweep-xattn: data ## ablation: cross-attention layers M of N (retrieval + VQA; 4 points x 3 seeds; 14.6 min per seed on 2 idle cores, ~44 min); SWEEP_ARGS="sweep.seeds=1" for one seed
	@$(PY) -m mammut_pl.sweep sweep=xattn $(SWEEP_ARGS)

sweep-loss: data ## ablation: contrastive:captioning loss weights (3 points x 3 seeds; 13.8 min per seed on 2 idle cores, ~41 min); SWEEP_ARGS=...
	@$(PY) -m mammut_pl.sweep sweep=loss_weight $(SWEEP_ARGS)

sweep-encoder: data ## ablation: image encoder size (3 points x 3 seeds; ~12-15 min per seed on 2 cores, not timed); SWEEP_ARGS=...
	@$(PY) -m mammut_pl.sweep sweep=encoder_size $(SWEEP_ARGS)

sweep-cross-task: data ## ablation: contrastive only / captioning only / both (3 points x 3 seeds; 14.8 min measured on 2 idle cores); SWEEP_ARGS=...
	@$(PY) -m mammut_pl.sweep sweep=cross_task $(SWEEP_ARGS)

sweep-video: data ## ablation: video tubes / fixed 3D sin-cos / gated connection on MSRVTT-QA (4 points x 3 seeds; ~15 min per seed on 2 cores); SWEEP_ARGS=...
	@$(PY) -m mammut_pl.sweep sweep=video $(SWEEP_ARGS)

sweep-cpe: data ## ablation: cropped positional embeddings in pretraining vs LVIS detection APr (3 points x 3 seeds; 22.5 min per seed on 2 cores, ~68 min); SWEEP_ARGS=...
	@$(PY) -m mammut_pl.sweep sweep=cpe $(SWEEP_ARGS)

sweep-scaling: data ## scaling study: CLIP vs MaMMUT, 3 sizes x 3 budgets, power-law fits of error vs counted FLOPs (18 runs, one seed; 13.7 min measured on 2 idle cores); SWEEP_ARGS=...
	@$(PY) -m mammut_pl.sweep sweep=scaling $(SWEEP_ARGS)

test: setup ## set up, then run the whole test suite (what CI runs)
	@$(PY) -m pytest -q

test-fast: setup ## unit tests only (skip the end-to-end ones)
	@$(PY) -m pytest -q -m "not e2e"

test-stress: setup ## `make test` STRESS_RUNS=3 times in a row beside STRESS_HOGS=2 busy CPU loops (a loaded machine); stops at the first failure
	@PY=$(PY) bash scripts/test_stress.sh $(STRESS_RUNS) $(STRESS_HOGS)

bench: setup .venv/.bench-stamp ## time mammut_pl vs CoCa/CLIP/lucidrains side by side (installs the bench extras; 9 min on 2 idle CPU cores measured, its compiled step's first compile 79 s with inductor's cache warm, ~9 min cold; ARGS=--quick: 7 min + compile, --smoke: seconds)
	@$(PY) -m bench $(ARGS)

.venv/.bench-stamp: pyproject.toml constraints.txt
	@$(PY) -m pip install -q -c constraints.txt -e ".[bench]"
	@touch $@

mlflow-ui: setup ## serve the MLflow UI for ./mlflow.db on http://$(MLFLOW_HOST):$(MLFLOW_PORT)
	@echo "MLflow UI on http://$(MLFLOW_HOST):$(MLFLOW_PORT) (Ctrl-C to stop)"
	@.venv/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host $(MLFLOW_HOST) --port $(MLFLOW_PORT)

mlflow-server: setup ## MLflow tracking server for many processes / machines: MLFLOW_BACKEND (sqlite, postgresql://...), artifacts in MLFLOW_ARTIFACTS
	@mkdir -p "$(MLFLOW_ARTIFACTS)"
	@echo "MLflow tracking server on http://$(MLFLOW_HOST):$(MLFLOW_PORT) (backend $(MLFLOW_BACKEND), artifacts in $(MLFLOW_ARTIFACTS)); Ctrl-C to stop"
	@echo "log to it: mlflow.tracking_uri=http://$(MLFLOW_HOST):$(MLFLOW_PORT)  (sweeps: sweep.tracking_uri=...)"
	@exec .venv/bin/mlflow server --backend-store-uri "$(MLFLOW_BACKEND)" --artifacts-destination "$(MLFLOW_ARTIFACTS)" \
		--host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS)

clean: ## remove run outputs (keeps .venv, data and mlflow.db)
	rm -rf outputs .pytest_cache
