# celeba-gender: `make help` lists the targets.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
DATA ?= $(or $(CELEBA_ROOT),../shared/data/celeba-subset)
# Test files run in parallel, each file on one worker (its module fixtures are made once).
TEST_WORKERS ?= auto

.DEFAULT_GOAL := help
.PHONY: help setup train smoke study-cpu sweep predict bench-latency analyze status tensorboard test test-fast lint format data-check bench-data bench-lightning bench-scale bench-tta readme-figures clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Made by the install: targets that need the venv depend on it, so a fresh clone's first
# `make train` or `make test` sets itself up, and later ones start at once (again only when
# pyproject.toml changes).
INSTALLED := $(VENV)/.installed
# `make train`'s recipe (conf/experiment/); EXPERIMENT= for the plain defaults.
EXPERIMENT ?= first_run

define install
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	@# matplotlib's font cache, built once here: a command stopped (Ctrl-C) while it first
	@# writes it would leave its lock, and every later import would wait on that lock.
	$(PYTHON) -c "import matplotlib.font_manager"
	@# Debian's chromium for the browser tests (no browser download by playwright).
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| echo "no chromium: the browser tests (-m browser) will skip (fail under CI=true)"
	@touch $(INSTALLED)
endef

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(PYTHON)
	$(install)

setup: $(PYTHON)  ## create .venv and (re)install the package with its dev tools (and chromium, as root)
	$(install)

train: $(INSTALLED)  ## set up if needed (once: ~2.5 min, ~7 GB), then a first run on the embedded sample, ~2 min on 2 free CPU cores (EXPERIMENT=cpu_quick, ARGS='model=vgg19 ...')
	$(PYTHON) train.py $(if $(and $(EXPERIMENT),$(if $(findstring experiment=,$(ARGS)),,1)),experiment=$(EXPERIMENT)) $(ARGS)

smoke: $(INSTALLED)  ## the 30-job sweep at smoke size (pretrained jobs need cached ImageNet weights)
	$(PYTHON) train.py -m 'model=glob(*)' 'treatment=glob(*)' experiment=smoke $(ARGS)

study-cpu: $(INSTALLED)  ## the 20-job study sized for 2 CPU cores, resumable (DATA=...; then make analyze SWEEP=outputs/multiruns/cpu_study)
	CELEBA_ROOT=$(DATA) $(PYTHON) train.py -m 'model=glob(*)' 'treatment=scratch_bce,scratch_ce' experiment=cpu_study hydra/launcher=local hydra.sweep.dir=$(if $(CELEBA_GENDER_ROOT),$(CELEBA_GENDER_ROOT)/)outputs/multiruns/cpu_study resume=true $(ARGS)

sweep: $(INSTALLED)  ## the study: 10 models x 3 treatments on GPU (CELEBA_ROOT=...; ARGS='trainer=ddp seed=0,1,2')
	$(PYTHON) train.py -m 'model=glob(*)' 'treatment=glob(*)' experiment=study $(ARGS)

predict: $(INSTALLED)  ## label photos (ARGS='ckpt_path=.../best.ckpt input=photos/')
	$(PYTHON) predict.py $(ARGS)

bench-latency: $(INSTALLED)  ## ms/image of every backbone (batch 1 and 32) and of face detection
	$(PYTHON) benchmarks/latency.py

analyze: $(INSTALLED)  ## report of a sweep: tables, conclusions, figures, notebook (SWEEP=outputs/multiruns/<time>; default newest)
	$(PYTHON) -m celeba_gender.analysis $(or $(SWEEP),$(lastword $(sort $(wildcard outputs/multiruns/*/))))

status: $(INSTALLED)  ## where a sweep stands: done / interrupted / failed / not started (SWEEP=...; default newest)
	$(PYTHON) -m celeba_gender.analysis $(or $(SWEEP),$(lastword $(sort $(wildcard outputs/multiruns/*/)))) --status

tensorboard: $(INSTALLED)  ## TensorBoard over every run in outputs/ (curves, hparams table, confusion matrices)
	$(VENV)/bin/tensorboard --logdir $(if $(CELEBA_GENDER_ROOT),$(CELEBA_GENDER_ROOT)/)outputs

test: $(INSTALLED)  ## set up if needed, then lint and the whole test suite (what CI runs)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

test-fast: $(INSTALLED)  ## the tests without the slow ones
	$(PYTHON) -m pytest -m 'not slow'

lint: $(INSTALLED)  ## ruff lint and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(INSTALLED)  ## ruff format and autofix
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

data-check: $(INSTALLED)  ## print the data report of DATA (default: CELEBA_ROOT or the shared subset)
	$(PYTHON) -m celeba_gender.data $(DATA)

bench-data: $(INSTALLED)  ## images/second: per-sample PIL loader vs cached batched pipeline
	$(PYTHON) benchmarks/data_loading.py --root $(DATA)

bench-lightning: $(INSTALLED)  ## training img/s: Lightning vs a plain PyTorch loop
	$(PYTHON) benchmarks/lightning_overhead.py --root $(DATA)

bench-scale: $(INSTALLED)  ## scan, cache, memory and training cost at 4k-50k images, extrapolated to 202,599 (ARGS='--json out.json')
	$(PYTHON) benchmarks/scale.py --root $(DATA) $(ARGS)

bench-tta: $(INSTALLED)  ## time to accuracy of a cpu_quick candidate, 3 seeds, then the report (RECIPE=prog64_112; ~9 min a seed)
	$(PYTHON) benchmarks/time_to_accuracy.py run --recipe $(or $(RECIPE),prog64_112) --seeds 0,1,2 --root $(DATA)
	$(PYTHON) benchmarks/time_to_accuracy.py report

# The cpu_study sweep of `make study-cpu` unless SWEEP= names another.
readme-figures: $(INSTALLED)  ## the README's demo.png and heat_maps.png from a sweep's validation-best run (SWEEP=...; ARGS='--heat-map-rows 4')
	$(PYTHON) benchmarks/readme_figures.py --sweep $(or $(SWEEP),$(if $(CELEBA_GENDER_ROOT),$(CELEBA_GENDER_ROOT)/)outputs/multiruns/cpu_study) $(ARGS)

clean:  ## remove caches and run outputs (not the venv, not ~/.cache/celeba_gender)
	rm -rf outputs multirun lightning_logs .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
