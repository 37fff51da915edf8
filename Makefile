# bmd-node: `make run` starts the node, `make test` runs the tests. Both install what they need first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
BMD := $(VENV)/bin/bmd-node
APT_PACKAGES := orthanc orthanc-dicomweb dcmtk dicom3tools pixelmed-apps postgresql chromium chromium-driver
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
OHIF_STAMP := viewer/node_modules/.installed
CHEST_CT ?= ../shared/data/cptac_lscc_chest

.PHONY: install system-packages run test lint demo bench train-segmentation viewer-screenshots clean

install: system-packages $(STAMP) $(OHIF_STAMP)

# Debian packages the tests need (real DICOM peers, validators, PostgreSQL, Orthanc's DICOMweb plugin and Chromium
# for the OHIF viewer tests); installed only when missing.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = "0" ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# torch first, pinned, so pip takes the local CPU build instead of pulling the CUDA stack.
# GPU deployment: `make install TORCH_INDEX=https://download.pytorch.org/whl/cu128` (see README).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

# The prebuilt OHIF viewer (npm @ohif/app dist/), pinned by version and sha512 in viewer/package-lock.json.
$(OHIF_STAMP): viewer/package.json viewer/package-lock.json
	cd viewer && npm ci --ignore-scripts --no-audit --no-fund
	touch $(OHIF_STAMP)

run: install
	$(BMD) db upgrade
	$(BMD) serve

test: install
	$(VENV)/bin/ruff check service tests alembic bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check service tests alembic bench
	$(VENV)/bin/lint-imports

demo: install
	$(PY) -m service.offline.demo.node_demo

bench: install
	$(PY) -m bench.run

train-segmentation: install
	$(BMD) train segmentation --out models/vertebra_seg
	$(BMD) train segmentation-fine --out models/vertebra_body_fine

# Our result objects in OHIF on the real chest CT (slow: software WebGL); screenshots + readings in docs/viewer.
viewer-screenshots: install
	$(PY) -m service.offline.viewer.screenshots --input $(CHEST_CT) --out docs/viewer

clean:
	rm -rf $(VENV) var .pytest_cache viewer/node_modules
