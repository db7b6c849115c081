#!/usr/bin/env bash
# The peer of `cargo bench --bench governed`: DuckDB (PyPI) in target/bench-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! target/bench-venv/bin/python -c 'import duckdb, pyarrow' 2>/dev/null; then
  python3 -m venv target/bench-venv
  target/bench-venv/bin/pip install --quiet 'duckdb==2.0.1' 'pyarrow>=15'
fi
target/bench-venv/bin/python -c 'import duckdb; print("DuckDB", duckdb.__version__, "ready in target/bench-venv")'
