# Both targets build .venv themselves, so they work on a fresh clone.
# torch is pinned: a CPU build of 2.13.0 lies on the CI/dev machines' disk; an
# unpinned `pip install torch` would download a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH ?= torch==2.13.0

.PHONY: install test demo lint bench clean demo-distributed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[lab,dev,tb,wandb,hf,lightning]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The main job, short: AdamW vs the Muon hybrid on the bundled tinyshakespeare (a few minutes
# on 2 CPU cores; --overwrite: a rerun replaces the previous demo); the full experiment is
# `muonkit compare --preset tiny --lr-sweep`.
demo: install
	$(PY) -m muonkit compare --preset tiny --steps 300 --seeds 0 --eval-every 50 --warmup 30 \
	    --momentum-warmup 100 --lr 1e-3 --out runs/demo --overwrite

# 2 processes on this machine (torchrun, gloo, CPU): the tiny GPT with FSDP2, then DDP.
demo-distributed: install
	for mode in fsdp2 ddp; do \
	  $(PY) -m torch.distributed.run --standalone --nproc_per_node=2 -m muonkit train \
	    --parallel $$mode --preset tiny --steps 20 --eval-every 10 --device cpu --no-progress \
	    --out runs/demo-distributed-$$mode || exit 1; \
	done
	$(PY) -m torch.distributed.run --standalone --nproc_per_node=4 -m muonkit train \
	  --parallel hsdp --replicate 2 --preset tiny --steps 20 --eval-every 10 --device cpu \
	  --no-progress --out runs/demo-distributed-hsdp

# Timed comparisons against the peers (never part of `make test`); results go to
# docs/results/benchmarks.md, and aol.py / compiled_step.py write records to docs/results/
# (aol, compiled_step) and regenerate their tables in docs/benchmarks.md. The peers are installed with --no-deps so none can replace torch.
bench: install  # peers = the `bench` extra of pyproject.toml
	$(PY) -m pip install -q --no-deps muon-optimizer muon-fsdp2 heavyball opt-einsum
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/gpt_step.py
	$(PY) benchmarks/orth_accuracy.py
	$(PY) benchmarks/aol.py
	$(PY) benchmarks/compiled_step.py

clean:
	rm -rf $(VENV) runs

# The four variant studies (docs/results/variants/README.md): MNIST, default settings. The
# data directory is $MUONKIT_DATA if set, else ./data; `muonkit data fetch` downloads MNIST
# there (files already present with the canonical md5 are kept).
DATA_DIR ?= $(or $(MUONKIT_DATA),data)
VARIANTS_OUT ?= runs/variants
VARIANTS_FLAGS ?=  # e.g. --overwrite to replace the studies of an earlier `make variants`
.PHONY: variants
variants: install
	$(PY) -m muonkit data fetch mnist --data-dir $(DATA_DIR)
	for s in large equal-memory rank-sweep hybrid; do \
		$(PY) -m muonkit variants $$s --dataset mnist --data-dir $(DATA_DIR) \
			--out $(VARIANTS_OUT)/$$s $(VARIANTS_FLAGS) || exit 1; \
	done

# The tuned rerun of the variant studies (issue 17; docs/results/variants/README.md): every LR
# swept on a held-out split, 3 seeds, runs in their own processes, resumable (a rerun into the
# same VARIANTS_OUT/tuned skips finished runs). JOBS runs at once, 1 torch thread each.
JOBS ?= 2
.PHONY: variants-tuned
variants-tuned: install
	$(PY) -m muonkit data fetch mnist --data-dir $(DATA_DIR)
	$(PY) -m muonkit variants tuned --dataset mnist --data-dir $(DATA_DIR) \
		--out $(VARIANTS_OUT)/tuned --jobs $(JOBS) --threads 1
