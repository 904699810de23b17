-- Queries of the migration runner.

-- name: lock
-- Transaction-level, taken first in each of migrate's transactions: a session lock would stay
-- behind on a server connection of a transaction pooler (PgBouncer), which hands each
-- transaction to whichever server connection is free.
SELECT pg_advisory_xact_lock(hashtext('pgqueue.migrate'))

-- name: create_ledger
CREATE SCHEMA IF NOT EXISTS pgqueue;
CREATE TABLE IF NOT EXISTS pgqueue.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: ledger_exists
SELECT to_regclass('pgqueue.schema_migrations') IS NOT NULL

-- name: applied
SELECT version FROM pgqueue.schema_migrations ORDER BY version

-- name: is_applied
SELECT EXISTS (SELECT FROM pgqueue.schema_migrations WHERE version = %s)

-- name: record
INSERT INTO pgqueue.schema_migrations (version, name) VALUES (%s, %s)

-- name: skip_function_bodies
-- functions are created in any order, before the functions and tables their bodies use (as
-- pg_dump does); a body is checked when it first runs, and the test suite runs them all
SET LOCAL check_function_bodies = off

-- name: record_functions
INSERT INTO pgqueue.schema_functions (sha256) VALUES (%s)
ON CONFLICT (singleton) DO UPDATE SET sha256 = excluded.sha256, applied_at = now()

-- name: functions_sha256
SELECT sha256 FROM pgqueue.schema_functions
