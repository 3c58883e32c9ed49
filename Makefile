# granary: `make demo` runs the main job, `make test` runs every test. Both first do what plain
# `make` does: Debian packages, the .venv, the C++ build and the install into .venv.
SHELL := /bin/bash
.DEFAULT_GOAL := all

PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
JOBS ?= $(shell nproc)
BUILD := build/release
ASAN_BUILD := build/asan
PY_BUILD := build/py
PREFIX ?= /usr/local
STAMPS := build/stamps

APT_PACKAGES := build-essential cmake ninja-build pkg-config python3-venv \
  liburing-dev libisal-dev libxxhash-dev libzstd-dev nlohmann-json3-dev libfmt-dev \
  libgtest-dev libgmock-dev libbenchmark-dev libcurl4-openssl-dev libssl-dev libexpat1-dev libarchive-dev fio \
  curl ceph-mon ceph-osd ceph-common radosgw

CMAKE_COMMON := -G Ninja -DCMAKE_BUILD_TYPE=Release

.PHONY: all deps venv build install-py test test-cpp test-asan test-py test-install demo bench install clean

all: install-py

# Debian packages: apt-get only when one is missing.
deps: $(STAMPS)/apt
$(STAMPS)/apt: Makefile
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null \
	  | awk '$$NF!="installed"{print $$1}'; for p in $(APT_PACKAGES); do \
	  dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done | sort -u); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@mkdir -p $(STAMPS) && touch $@

# Python environment with pinned packages.
venv: $(STAMPS)/venv
$(STAMPS)/venv: requirements-dev.txt $(STAMPS)/apt
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	@mkdir -p $(STAMPS) && touch $@

# C++ library, CLI and tests (Release, -O2).
build: $(STAMPS)/apt
	@test -f $(BUILD)/build.ninja || cmake -S . -B $(BUILD) $(CMAKE_COMMON) -DGRANARY_BUILD_TESTS=ON
	cmake --build $(BUILD) -j $(JOBS)

# The Python package (extension + CLI) into .venv, through scikit-build-core as `pip install .`
# does, keeping its build directory for fast rebuilds.
install-py: build $(STAMPS)/venv
	$(VPY) -m pip install -q --no-build-isolation --no-deps \
	  --config-settings=build-dir=$(PY_BUILD) .

# Every test, beside a throwaway Ceph RGW (scripts/ceph-rgw.sh) for the S3 tests; the
# individual test-* targets skip S3 tests when no server is configured.
test: install-py
	scripts/with-rgw.sh $(MAKE) --no-print-directory test-cpp test-py test-install test-asan

test-cpp: build $(STAMPS)/venv
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600

test-py: install-py
	OMP_NUM_THREADS=2 $(VPY) -m pytest -q -p no:cacheprovider --timeout=900 python/tests bench/test_harness.py \
	  bench/test_checkpoint_bench.py bench/test_dataset_bench.py \
	  bench/test_model_bench.py bench/test_s3_bench.py

test-asan: $(STAMPS)/apt $(STAMPS)/venv
	@test -f $(ASAN_BUILD)/build.ninja || cmake -S . -B $(ASAN_BUILD) -G Ninja \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGRANARY_SANITIZE=ON -DGRANARY_BUILD_TESTS=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS) --timeout 900

# `make install` into a throwaway prefix, then build and run a separate project against it.
test-install: $(STAMPS)/apt
	rm -rf build/install-check
	$(MAKE) --no-print-directory install PREFIX=$(CURDIR)/build/install-check/prefix
	cmake -S tests/install_consumer -B build/install-check/consumer -G Ninja \
	  -DCMAKE_PREFIX_PATH=$(CURDIR)/build/install-check/prefix
	cmake --build build/install-check/consumer
	build/install-check/consumer/consumer $(CURDIR)/build/install-check/store
	build/install-check/prefix/bin/granary --help >/dev/null

demo: install-py
	$(VENV)/bin/granary doctor --quick build/demo-doctor
	$(VPY) examples/store_roundtrip.py build/demo-store
	OMP_NUM_THREADS=2 $(VPY) examples/checkpoint_demo.py build/demo-checkpoint
	OMP_NUM_THREADS=2 $(VPY) examples/dataset_demo.py build/demo-dataset
	OMP_NUM_THREADS=2 $(VPY) examples/model_demo.py build/demo-model

bench: install-py
	OMP_NUM_THREADS=2 $(VPY) bench/run_all.py

# C++ library (shared), headers, CLI and CMake package config under $(PREFIX).
install: $(STAMPS)/apt
	cmake -S . -B build/dist $(CMAKE_COMMON) -DGRANARY_SHARED=ON -DGRANARY_BUILD_TESTS=OFF \
	  -DCMAKE_INSTALL_PREFIX=$(PREFIX)
	cmake --build build/dist -j $(JOBS)
	cmake --install build/dist

clean:
	rm -rf build $(VENV) dist *.egg-info
