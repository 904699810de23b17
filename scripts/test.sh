#!/usr/bin/env bash
# Set up .venv with the development extras and run lint and the whole test suite against a
# real PostgreSQL (a throwaway embedded server unless PGQUEUE_TEST_DSN is set).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[embedded,otel,dev]'
.venv/bin/ruff check pgqueue cli tests benchmarks examples
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
