# The README's commands. `make repro` and `make test` each run `setup` first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline workplaces keep the TinyStories shards here; elsewhere `prepare` downloads them.
SHARED_TINYSTORIES ?= ../shared/data/tinystories

.PHONY: setup data browser repro test test-fast clean-venv

setup: $(VENV)/.installed .dvc/plots_template.html

# torch==2.13.0 comes first from requirements.txt so pip keeps the CPU build instead of a multi-GB CUDA one.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

# `dvc plots show/diff` pages with vega inlined, so they render offline (see pico/plots_html.py)
.dvc/plots_template.html: $(VENV)/.installed
	$(BIN)/python -m pico.plots_html $@

# Headless Chromium for the tests that render the HTML report and DVC's plots (Debian package)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing chromium for the browser tests"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Copy the local TinyStories shards into data/raw/tinystories when there are any and nothing is there yet:
# hard links where the file system allows (no space), else a copy, never a symlink. The folder is a DVC output
# of `prepare`, and a `dvc exp run` before it is cached deletes it: through a symlink, the shared files too.
data:
	@if [ ! -e data/raw/tinystories ] && [ -d "$(SHARED_TINYSTORIES)" ]; then \
		mkdir -p data/raw && rm -rf data/raw/tinystories.tmp && \
		{ cp -rl "$(SHARED_TINYSTORIES)" data/raw/tinystories.tmp 2>/dev/null || \
		  { rm -rf data/raw/tinystories.tmp && cp -r "$(SHARED_TINYSTORIES)" data/raw/tinystories.tmp; }; } && \
		mv data/raw/tinystories.tmp data/raw/tinystories && \
		echo "copied $(SHARED_TINYSTORIES) -> data/raw/tinystories"; fi

repro: setup data
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

test: setup data browser
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n 2 --durations=15

test-fast: setup data
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n 2 -m "not e2e"

clean-venv:
	rm -rf $(VENV)
