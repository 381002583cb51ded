# The README's commands. Each builds .venv from scratch when it is missing.
#   make demo                    the runtime only (no torch) + the demo
#   make evaluate DATA=DIR       + the eval extra (no torch): `streamcad evaluate` on DIR
#   make test                    every extra but TensorRT and the GPU one: the whole test suite
#   make test-runtime            a second venv, .venv-runtime, WITHOUT torch: the runtime's tests
# Python >= 3.11 is checked before anything is made; a venv whose creation fails is removed,
# so the next run starts clean instead of failing on a half-made .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RT_VENV := .venv-runtime
MODEL ?= engines/models/default.onnx
# torch for `make test`: the pinned release. On a machine without an NVIDIA GPU pass PyTorch's
# CPU-wheel index, or pip fetches the multi-GB CUDA build from PyPI:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PIP_TORCH_INDEX := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
# setuptools' notice on every editable install ("Editable installation. Please be careful with
# folders ... same name as your package") is information, not a problem: keep it off the screen
QUIET_BUILD := PYTHONWARNINGS="ignore:Editable installation"
# make test-runtime: every test module is collected there (test_packaging checks that too), and
# these run: the CLI without the extras, the runtime's import hygiene, messages, config, client
RUNTIME_TESTS ?= tests/test_cli_extras.py tests/test_no_torch.py tests/test_messages.py tests/test_config.py \
	tests/test_client.py tests/test_docs_examples.py tests/test_docs_protocol_evolution.py tests/test_cli_listen.py \
	tests/test_cli_status_current.py tests/test_cli_telemetry.py tests/test_packaging.py tests/test_preview.py

.PHONY: demo test test-runtime evaluate lint clean check-python ffmpeg chromium

check-python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "make: $(PY) not found; streamcad needs Python >= 3.11: make PY=/path/to/python3.11 ..." >&2; exit 1; }
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "make: streamcad needs Python >= 3.11; $(PY) is $$($(PY) -c 'import platform; print(platform.python_version())'): make PY=python3.11 ... (or newer)" >&2; exit 1; }

# $(1) = venv folder. Made whole or not at all (then stamped $(1)/.made); an existing one, made
# before, must be Python >= 3.11 too.
define make_venv
	@if [ -x $(1)/bin/python ]; then \
	  $(1)/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "make: $(1) was made with Python $$($(1)/bin/python -c 'import platform; print(platform.python_version())'); streamcad needs >= 3.11: rm -rf $(1) and rerun" >&2; exit 1; }; \
	else \
	  rm -rf $(1); \
	  { $(PY) -m venv $(1) && $(1)/bin/python -m pip install -q --upgrade pip; } || { rm -rf $(1); echo "make: could not create $(1) with $(PY) (removed it again)" >&2; exit 1; }; \
	fi
	@touch $(1)/.made
endef

$(VENV)/.made: | check-python
	$(call make_venv,$(VENV))

# The runtime only (no torch): onnxruntime on the CPU.
$(VENV)/.base: pyproject.toml | $(VENV)/.made
	$(QUIET_BUILD) $(BIN)/python -m pip install -q -e '.[cpu]'
	touch $@

# + the eval extra for `streamcad evaluate` (scikit-learn, scipy, matplotlib; no torch).
$(VENV)/.eval: pyproject.toml | $(VENV)/.base
	$(QUIET_BUILD) $(BIN)/python -m pip install -q -e '.[cpu,eval]'
	touch $@

# Everything for the test suite. torch is installed first (its pinned release, from TORCH_INDEX
# when given) so that the train extra does not pull another build.
$(VENV)/.full: pyproject.toml | $(VENV)/.made
	$(BIN)/python -m pip install -q $(PIP_TORCH_INDEX) '$(TORCH)'
	$(QUIET_BUILD) $(BIN)/python -m pip install -q -e '.[cpu,train,dev,viewer,igtl]'
	touch $@

$(RT_VENV)/.made: | check-python
	$(call make_venv,$(RT_VENV))

$(RT_VENV)/.runtime: pyproject.toml | $(RT_VENV)/.made
	$(QUIET_BUILD) $(RT_VENV)/bin/python -m pip install -q -e '.[cpu,dev]'
	touch $@

demo: $(VENV)/.base
	$(BIN)/streamcad demo

evaluate: $(VENV)/.eval
	@test -n "$(DATA)" || { echo "make evaluate: name the folder: make evaluate DATA=DIR [MODEL=$(MODEL)] (BUS-BRA: Images/ + bus_data.csv; BUSI: benign/ malignant/ normal/)" >&2; exit 2; }
	$(BIN)/streamcad evaluate '$(MODEL)' '$(DATA)' --json '$(or $(OUT),evaluate.json)'

# FFmpeg for the url: source tests (real RTSP and HTTP servers on 127.0.0.1) and the mid-file
# size-change test: installed from the distribution's packages when missing and apt-get can
# (root); otherwise those tests skip themselves.
ffmpeg:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; } \
	      || echo "make: could not install ffmpeg; the network-source tests will skip" >&2; \
	  else echo "make: ffmpeg is missing and apt-get is unavailable (or not root): the network-source tests will skip" >&2; fi; }

# Chromium for the viewer's browser test (tests/test_viewer.py: headless, driven over DevTools):
# Debian's package, installed the same way; without it that test skips itself.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "make: could not install chromium; the browser test will skip" >&2; \
	  else echo "make: chromium is missing and apt-get is unavailable (or not root): the browser test will skip" >&2; fi; }

test: $(VENV)/.full ffmpeg chromium
	$(BIN)/python -m pytest -q -ra

# The runtime's tests where torch, scikit-learn and the rest of train/ are NOT installed: every
# test module must be collected (the training ones skip themselves), then the runtime tests run.
test-runtime: $(RT_VENV)/.runtime
	$(RT_VENV)/bin/python -m pytest -qq --collect-only tests
	$(RT_VENV)/bin/python -m pytest -q -ra $(RUNTIME_TESTS)

lint: $(VENV)/.full
	$(BIN)/ruff check streamcad train engines benchmarks tests

clean:
	rm -rf $(VENV) $(RT_VENV) build *.egg-info
