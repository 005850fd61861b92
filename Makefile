# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create the virtualenv .venv through `make setup` when it is missing or stale.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= data/movielens
RUNS   ?= runs

.PHONY: setup system-tools demo test test-fast gpu-check lint format lock clean

KERNEL := seminar/pq/_fused_scan.so
NATIVE := serving/native/_fused_step.so

setup: $(STAMP) $(KERNEL) $(NATIVE)

# The PQ shortlist kernel (C++, the machine's g++); without it the retriever uses faiss.
$(KERNEL): seminar/pq/fused_scan.cpp seminar/pq/fused_scan.h $(STAMP)
	$(BIN)/python -m seminar.pq.fused_scan

# The fused step in C++ with the kernel, and its Triton backend (fetches ONNX Runtime's API
# headers from Debian once).
$(NATIVE): serving/native/*.cc serving/native/*.h seminar/pq/fused_scan.* $(STAMP)
	$(BIN)/python -m seminar.serving.native.fused_step

# torch is pinned and installed in the same pip call as everything else: an unpinned
# torch pulled in by another package would download a multi-GB CUDA build.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0 -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import numpy, torch; assert numpy.__version__ < '2', numpy.__version__; print('venv ready: numpy', numpy.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

# Optional, Debian as root: the real Prometheus, redis-server (the online event log's shared
# backend) and perf_analyzer (in a Debian 13 chroot, since its wheels need glibc >= 2.38).
# Without them their tests skip and say so. CI runs this first.
PERF_CHROOT ?= /opt/seminar/perf-chroot
system-tools:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus redis-server debootstrap >/dev/null
	test -x $(PERF_CHROOT)/opt/pa/bin/perf_analyzer || bash clients/perf_analyzer_chroot.sh $(PERF_CHROOT)

demo: $(STAMP) $(KERNEL) $(NATIVE)
	$(BIN)/python -m seminar.cli.demo --data $(DATA) --runs $(RUNS)

test: $(STAMP) $(KERNEL) $(NATIVE)
	$(BIN)/pytest -q --durations=25

# On a bare GPU machine (CUDA torch, triton, numpy; no venv, nothing installed): the GPU tests,
# the kernels against torch and the exact GSU, pq_retrieval on CUDA, TensorRT where it imports;
# writes the `gpu` report under reports/. Its CPU dry run is part of `make test` (tests/test_gpu_check.py).
GPU_PYTHON ?= python3
gpu-check:
	timeout 480 $(GPU_PYTHON) bench/gpu_check.py --out reports

test-fast: $(STAMP) $(KERNEL) $(NATIVE)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock:
	rm -rf /tmp/seminar-lock && $(PYTHON) -m venv /tmp/seminar-lock
	/tmp/seminar-lock/bin/pip install --quiet torch==2.13.0 -e .
	/tmp/seminar-lock/bin/pip freeze --exclude-editable | grep -v '^torch==' > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) data runs *.egg-info .pytest_cache .ruff_cache
