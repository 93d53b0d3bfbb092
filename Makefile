# Quick start: `make demo` (bake the default project, train, write pictures) and `make test`
# (CI's tests; `make test-all` adds the long end-to-end runs marked slow).
# Both create or reuse the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
PY := $(BIN)/python
DEMO := demo
RUN := cd $(DEMO)/diffusion-lab && $(BIN)/diffusion_lab

.PHONY: demo test test-all clean

$(VENV)/installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

test: $(VENV)/installed
	$(PY) -m pytest tests -m "not slow"

test-all: $(VENV)/installed
	$(PY) -m pytest tests

demo: $(VENV)/installed
	rm -rf $(DEMO)
	$(BIN)/cookiecutter . --no-input --output-dir $(DEMO)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e $(DEMO)/diffusion-lab
	$(RUN) train experiment=toy2d
	$(RUN) sample run=runs/toy2d n=2000 trajectory=true
	$(RUN) train experiment=digits
	$(RUN) sample run=runs/digits n=64 steps=10 trajectory=true
	@echo
	@echo "Pictures:"
	@echo "  toy 2D samples      $(DEMO)/diffusion-lab/runs/toy2d/generated/samples.png"
	@echo "  toy 2D trajectories $(DEMO)/diffusion-lab/runs/toy2d/generated/trajectory.png"
	@echo "  digits samples      $(DEMO)/diffusion-lab/runs/digits/generated/samples.png"
	@echo "  digits denoising    $(DEMO)/diffusion-lab/runs/digits/generated/trajectory.png"
	@echo "  grids during training: $(DEMO)/diffusion-lab/runs/*/samples/"

clean:
	rm -rf $(DEMO) $(VENV)
