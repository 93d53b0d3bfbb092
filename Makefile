# Quick start: `make demo` (bake the default project, train, write pictures) and `make test`.
# Both create or reuse the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO := demo

.PHONY: demo test clean

$(VENV)/installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

test: $(VENV)/installed
	$(PY) -m pytest tests

demo: $(VENV)/installed
	rm -rf $(DEMO)
	$(VENV)/bin/cookiecutter . --no-input --output-dir $(DEMO)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e $(DEMO)/diffusion-lab
	cd $(DEMO)/diffusion-lab && ../../$(VENV)/bin/diffusion_lab train experiment=toy2d
	cd $(DEMO)/diffusion-lab && ../../$(VENV)/bin/diffusion_lab sample run=runs/toy2d n=2000 trajectory=true
	cd $(DEMO)/diffusion-lab && ../../$(VENV)/bin/diffusion_lab train experiment=digits
	cd $(DEMO)/diffusion-lab && ../../$(VENV)/bin/diffusion_lab sample run=runs/digits n=64 steps=10 trajectory=true
	@echo
	@echo "Pictures:"
	@echo "  toy 2D samples      $(DEMO)/diffusion-lab/runs/toy2d/generated/samples.png"
	@echo "  toy 2D trajectories $(DEMO)/diffusion-lab/runs/toy2d/generated/trajectory.png"
	@echo "  digits samples      $(DEMO)/diffusion-lab/runs/digits/generated/samples.png"
	@echo "  digits denoising    $(DEMO)/diffusion-lab/runs/digits/generated/trajectory.png"
	@echo "  grids during training: $(DEMO)/diffusion-lab/runs/*/samples/"

clean:
	rm -rf $(DEMO) $(VENV)
