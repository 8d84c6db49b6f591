# Every target makes .venv when it is missing. Needs only python3 (>= 3.11), pip and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The project's bytecode is compiled first, as an installed wheel has it: the tests start
# hundreds of `dagnats` processes, and with PYTHONDONTWRITEBYTECODE set each would compile
# every module again (0.2 s of CPU a process). Exit code 5 ("no tests ran", e.g. a filter
# that selects none) is not a failure.
pytest: $(STAMP)
	$(BIN)/python -m compileall -q dagnats kernel steps projections tests examples bench >/dev/null
	$(BIN)/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/python -m dagnats.demo

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# The long simulation: every example 10,000 seeds, the mutants, the real engine (tests/test_sim*.py).
.PHONY: sim
sim: $(STAMP)
	DAGNATS_SIM_FULL=1 $(BIN)/python -m pytest tests/test_sim.py tests/test_sim_mutants.py
