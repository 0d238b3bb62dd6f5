# Two entry points: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv with the system python3 and install the package into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-encoders test lint clean wheel-check

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/sarmae demo

# Re-creates the MAE encoders the demo ships (src/sarmae/weights/): the demo pre-trains them itself on its own
# generated pools with demo/pretrain.yaml (~35 min on 2 cores with native bf16), runs the table with them, and the
# encoders and their provenance records are copied into the package.
ENCODER_RUN := runs/demo-encoders
demo-encoders: $(VENV)/.installed
	$(BIN)/sarmae demo encoders=pretrain out=$(ENCODER_RUN)
	for name in natural sar_pixels; do \
		cp $(ENCODER_RUN)/pretrain_$$name/encoder.safetensors src/sarmae/weights/demo_$$name.safetensors && \
		cp $(ENCODER_RUN)/pretrain_$$name/provenance.json src/sarmae/weights/demo_$$name.json || exit 1; \
	done

test: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q tests
	$(MAKE) --no-print-directory wheel-check

# The package as a pip user gets it: build a wheel, install it in a fresh venv (no editable install; the
# dependencies are borrowed from .venv through a path entry, which does not load its editable finder) and run a
# named config and `sarmae demo --help` from a folder outside the checkout.
WHEEL_ENV := $(CURDIR)/build/wheel-env
wheel-check: $(VENV)/.installed
	rm -rf build/wheel dist $(WHEEL_ENV)
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w build/wheel .
	$(PY) -m venv --without-pip $(WHEEL_ENV)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(WHEEL_ENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/deps.pth"
	$(BIN)/pip --python $(WHEEL_ENV)/bin/python install -q --no-deps build/wheel/sarmae-*.whl
	cd /tmp && $(WHEEL_ENV)/bin/sarmae demo --help > /dev/null && $(WHEEL_ENV)/bin/python -c \
		"import sarmae, sarmae.config as c; assert 'wheel-env' in sarmae.__file__, sarmae.__file__; \
		c.load_config('vitdet_tiny'); c.load_config('demo/demo.yaml'); \
		from sarmae.experiments.demo import shipped_encoder as e; \
		assert all(e(n).is_file() and e(n).with_suffix('.json').is_file() for n in ('natural', 'sar_pixels')); \
		print('wheel-check: OK', sarmae.__file__)"

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
