# UnitedHuman task runner. Every recipe sets up .venv first (fast when already done).
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := env_var_or_default("UNITEDHUMAN_VENV", ".venv")
py := venv / "bin/python"
export ANNY_CACHE_DIR := env_var_or_default("ANNY_CACHE_DIR", justfile_directory() / ".cache/anny")
export UNITEDHUMAN_CACHE := env_var_or_default("UNITEDHUMAN_CACHE", justfile_directory() / ".cache/unitedhuman")

# List the recipes.
default:
    @{{just_executable()}} --list

# Create .venv (or $UNITEDHUMAN_VENV) with all extras and dev tools (idempotent; prints each step).
setup:
    @bash scripts/setup.sh

# Run the test suite (fast tests; `just test -m slow` for the long ones), then build and validate a shard set.
test *ARGS: setup
    {{py}} -m pytest {{ARGS}}
    bash scripts/ci_shards.sh

# The slow end-to-end tests: the demo's and `just learn`'s smallest settings into temporary folders (CI runs them).
test-demo: setup
    {{py}} -m pytest -m slow tests/test_demo.py tests/test_learn.py

# Run the whole pipeline end to end on the embedded defaults and write demo/report.html.
demo: setup
    bash scripts/demo.sh

# Train long enough to see whether training learns people (about 2 h on 2 CPU cores; resumes): data, stage 1,
# stage 2 and its full-body-only ablation, every snapshot evaluated; results into learn/ and docs/benchmarks.md.
learn *ARGS: setup
    {{py}} scripts/learn.py --docs --ship {{ARGS}}

# Open demo/report.html in headless Chromium: every image loads, every figure captioned; screenshot next to it.
# Skipped, saying what to install, when no Chromium is found (Debian: apt-get install chromium).
report-check: setup
    {{py}} scripts/report_check.py demo/report.html

# Browse a checkpoint's people in the browser at any zoom (http://127.0.0.1:8000/; `just view CKPT --help`).
view CKPT *ARGS: setup
    {{venv}}/bin/uh-view {{CKPT}} {{ARGS}}

# Lint with ruff; vermin checks that uh_train needs nothing newer than Python 3.10.
lint: setup
    {{venv}}/bin/ruff check mst_pipeline uh_train blender_scripts tests scripts
    {{venv}}/bin/vermin -q -t=3.10- --no-tips --violations --eval-annotations uh_train

# Run the benchmarks (all, the one called NAME, or else those whose name contains NAME) and write docs/benchmarks.md.
bench *NAME: setup
    {{py}} scripts/bench.py {{NAME}}
