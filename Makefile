# Quick start: `make demo` and `make test` set everything up themselves (virtual environment, packages,
# the Debian Fashion-MNIST files where apt-get is available).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.robustlab-installed

.PHONY: setup system-data demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned exactly: this version is the local CPU wheel (a loose pin pulls CUDA packages).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# torchattacks is the independent implementation the attack tests cross-check against. Its metadata asks
	# for torchvision, which it never imports and which would replace the pinned torch: install it alone.
	$(PY) -m pip install --quiet --no-deps torchattacks==3.5.1
	touch $(STAMP)

# Real Fashion-MNIST from Debian's package, used by the data tests and the Fashion-MNIST configs (optional).
system-data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } || \
		echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	else echo "note: apt-get not available as root; Fashion-MNIST comes from a download (data.download = true)"; fi

setup: $(STAMP) system-data

demo: setup
	$(VENV)/bin/robustlab demo

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

# The peer libraries are bench-only dependencies (benchmarks/peers.py compares against them).
bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	@ls benchmarks/*.py >/dev/null 2>&1 && for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done \
		|| echo "no benchmarks yet"

clean:
	rm -rf $(VENV) runs .pytest_cache
