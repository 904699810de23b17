-- Queries of the testing kit (pgqueue/testing): a test database's clock, what a drain runs,
-- and what was enqueued. Never used against a production database.

-- name: clock_schema
-- A test database's own now(): pgqueue's SQL calls now() unqualified, and a database whose
-- search_path names pg_catalog last resolves it to pgqueue_testing.now() instead of the
-- built-in (PostgreSQL searches pg_catalog first only when the path does not name it).
-- Installed before `migrate`, so that column defaults use it too.
CREATE SCHEMA IF NOT EXISTS pgqueue_testing

-- name: clock_table
CREATE TABLE IF NOT EXISTS pgqueue_testing.clock (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    shift interval NOT NULL DEFAULT interval '0'
)

-- name: clock_function
-- The transaction's start time, moved by the test's shift (STABLE, like now() itself).
CREATE OR REPLACE FUNCTION pgqueue_testing.now() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.now() + coalesce((SELECT shift FROM pgqueue_testing.clock), interval '0')
$$

-- name: clock_search_path
-- For the sessions opened from now on (the pools of the test's application among them).
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET search_path = "$user", public, pgqueue_testing, pg_catalog',
                   current_database());
END
$$

-- name: clock_installed
SELECT to_regprocedure('pgqueue_testing.now()') IS NOT NULL
       AND current_setting('search_path') LIKE '%pgqueue_testing, pg_catalog'

-- name: clock_shift
-- Move the clock by `by` (an interval; negative goes back); the new now().
INSERT INTO pgqueue_testing.clock AS c (one, shift) VALUES (true, %(by)s)
ON CONFLICT (one) DO UPDATE SET shift = c.shift + excluded.shift
RETURNING pg_catalog.now() + shift

-- name: clock_reset
DELETE FROM pgqueue_testing.clock

-- name: clock_now
SELECT now()

-- name: due_queues
-- The queues with a run due now, paused queues left out (a drain serves them).
SELECT DISTINCT r.queue FROM pgqueue.ready r
 WHERE r.run_at <= now()
   AND NOT EXISTS (SELECT 1 FROM pgqueue.queues q WHERE q.name = r.queue AND q.paused)
 ORDER BY 1

-- name: next_wake
-- When the next run not due yet becomes due (a retry's backoff, a sleep, an event's timeout).
SELECT min(r.run_at) FROM pgqueue.ready r
 WHERE r.run_at > now()
   AND NOT EXISTS (SELECT 1 FROM pgqueue.queues q WHERE q.name = r.queue AND q.paused)

-- name: worked_on
-- The runs the given workers made attempts of, in id order.
SELECT id, task, queue, priority, status, input, result, error, run_at, created_at,
       started_at, finished_at, attempt, recoveries, idempotency_key, tags, metadata,
       parent_id, children_total, children_pending
  FROM pgqueue.runs
 WHERE id IN (SELECT run_id FROM pgqueue.attempts WHERE worker_id = ANY (%(workers)s::uuid[]))
 ORDER BY id

-- name: enqueued
-- Runs of a task (any task when NULL), in a status (any when NULL), oldest first.
SELECT id, task, queue, priority, status, input, result, error, run_at, created_at,
       started_at, finished_at, attempt, recoveries, idempotency_key, tags, metadata,
       parent_id, children_total, children_pending
  FROM pgqueue.runs
 WHERE (%(task)s::text IS NULL OR task = %(task)s)
   AND (%(status)s::text IS NULL OR status = %(status)s)
 ORDER BY id

-- name: set_queue
-- A run claimed through a private queue for a direct call goes back to its task's queue, so
-- that its retries and wake-ups queue where a worker would put them.
UPDATE pgqueue.runs SET queue = %(queue)s WHERE id = %(id)s
