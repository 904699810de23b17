#!/usr/bin/env bash
# Set up .venv with the development extras, run lint, build the docs site (mkdocs --strict: a broken
# link or reference fails) and run the whole test suite against a real PostgreSQL (a throwaway
# embedded server unless PGQUEUE_TEST_DSN is set).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
# The dashboard's browser tests drive Debian's chromium with its chromedriver (never a downloaded
# browser). They fail, not skip, without it unless PGQUEUE_SKIP_BROWSER=1.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ] \
        && [ "${PGQUEUE_SKIP_BROWSER:-}" != 1 ]; then
    echo "installing chromium and chromium-driver (apt-get) for the dashboard's browser tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null; }
fi
# The topology tests start a real PgBouncer (Debian's package); they skip only where it cannot
# be installed (not root), so CI (root) always runs them.
if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ] && [ "$(id -u)" = 0 ]; then
    echo "installing pgbouncer (apt-get) for the PgBouncer topology tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq pgbouncer >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq pgbouncer >/dev/null; }
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[embedded,otel,dashboard,dev,docs]'
.venv/bin/ruff check pgqueue cli tests benchmarks examples scripts docs/_hooks
.venv/bin/mypy
site_dir=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site_dir"
rm -rf "$site_dir"
.venv/bin/python -m pytest "$@"
