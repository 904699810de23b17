-- Enqueue control (pgqueue/control.py, sql/functions/enqueue_control.sql).

-- name: register
-- A task's debounce, singleton and throttle rules, as declared in code (NULL: none).
UPDATE pgqueue.tasks SET control = %(control)s::jsonb, updated_at = now()
 WHERE name = %(task)s AND control IS DISTINCT FROM %(control)s::jsonb

-- name: list_tasks
-- The registered tasks with their defaults and rules (`pgqueue tasks`).
SELECT t.name, t.queue, t.priority, pgqueue.control_summary(t.control) AS control,
       t.concurrency_key_field, t.rate_limits IS NOT NULL AS rate_limited
  FROM pgqueue.tasks t
 ORDER BY t.name

-- name: batch_items
-- The items a batch's leader set aside at its claim (worker/batches.py), oldest first.
SELECT r.id, r.input::text AS input
  FROM pgqueue.runs r JOIN pgqueue.ready q ON q.run_id = r.id
 WHERE r.batch_id = %(leader)s AND r.status = 'queued'
 ORDER BY r.id

-- name: finish_batch
-- The outcomes of a batch's other items, written by the leader's worker before the leader's own.
-- Fence: the leader's row, locked (FOR SHARE: a rescue or takeover waits, or this writes nothing)
-- and still this attempt's on this worker; each item is taken out of `ready` (a claim that took
-- an item whose time set aside ran out keeps it: it is skipped here).
WITH leader AS (
    SELECT r.id FROM pgqueue.runs r
     WHERE r.id = %(leader)s AND r.attempt = %(attempt)s AND r.worker_id = %(worker)s::uuid
       AND r.status = 'running'
       FOR SHARE
), taken AS (
    DELETE FROM pgqueue.ready q
     USING pgqueue.runs r, leader
     WHERE q.run_id = ANY (%(ids)s::bigint[]) AND r.id = q.run_id AND r.batch_id = leader.id
       AND r.status = 'queued'
    RETURNING q.run_id
), done AS (
    UPDATE pgqueue.runs r
       SET status = u.status, result = u.result, error = u.error, attempt = r.attempt + 1,
           started_at = coalesce(r.started_at, now()), attempt_started_at = now(), finished_at = now(),
           worker_id = %(worker)s::uuid
      FROM taken
      JOIN unnest(%(ids)s::bigint[], %(statuses)s::text[], %(results)s::text[]::jsonb[], %(errors)s::text[]::jsonb[])
           AS u(id, status, result, error) ON u.id = taken.run_id
     WHERE r.id = taken.run_id
    RETURNING r.id
)
SELECT count(*) AS finished, (SELECT pg_notify('pgqueue_done', '') WHERE EXISTS (SELECT 1 FROM done)) AS notified
  FROM done

-- name: release_batch
-- A batch whose leader did not succeed hands its other items back: due now, each on its own.
-- Their rows in `ready` are locked first, as the claim locks them (ready, then runs); one a claim
-- holds (its time set aside ran out) is the claim's.
WITH items AS (
    SELECT q.run_id FROM pgqueue.ready q JOIN pgqueue.runs r ON r.id = q.run_id
     WHERE r.batch_id = %(leader)s AND r.status = 'queued'
       FOR UPDATE OF q SKIP LOCKED
), due AS (
    UPDATE pgqueue.ready q SET run_at = now() FROM items WHERE q.run_id = items.run_id
)
UPDATE pgqueue.runs r SET batch_id = NULL, run_at = now() FROM items WHERE r.id = items.run_id
