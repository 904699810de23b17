-- Queries about runs: enqueueing them, reading them back, listing, and acting on them.

-- name: enqueue_many
SELECT id, created FROM pgqueue.enqueue_many(
    %(task)s,
    %(inputs)b::text[]::jsonb[],
    queue => %(queue)s,
    priority => %(priority)s,
    run_at => %(run_at)s,
    delay => %(delay)s,
    idempotency_keys => %(keys)s::text[],
    tags => %(tags)s::text[],
    metadata => %(metadata)s::jsonb,
    schedule_to_start => %(schedule_to_start)s,
    parent_id => %(parent_id)s::bigint,
    concurrency_keys => %(concurrency_keys)s::text[],
    rate_costs => %(rate_costs)s::text[]::jsonb[],
    trace_context => %(trace_context)s::jsonb,
    deadline => %(deadline)s::interval)

-- name: enqueue_one
SELECT id, created FROM pgqueue.enqueue_one(
    %(task)s,
    %(input)s::jsonb,
    queue => %(queue)s,
    priority => %(priority)s,
    run_at => %(run_at)s,
    delay => %(delay)s,
    idempotency_key => %(key)s,
    tags => %(tags)s::text[],
    metadata => %(metadata)s::jsonb,
    schedule_to_start => %(schedule_to_start)s,
    concurrency_key => %(concurrency_key)s,
    rate_cost => %(rate_cost)s::jsonb,
    trace_context => %(trace_context)s::jsonb,
    deadline => %(deadline)s::interval)

-- name: get_run
SELECT id, task, queue, priority, status, input, result, error, run_at, created_at,
       started_at, finished_at, attempt, recoveries, idempotency_key, tags, metadata,
       parent_id, children_total, children_pending
  FROM pgqueue.runs
 WHERE id = %s

-- name: list_runs
SELECT id, task, queue, status, priority, attempt, failures, recoveries, created_at, run_at,
       started_at, finished_at, error ->> 'type' AS error_type
  FROM pgqueue.runs
 WHERE (%(task)s::text IS NULL OR task = %(task)s)
   AND (%(status)s::text IS NULL OR status = %(status)s)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s)
   AND (%(before)s::bigint IS NULL OR id < %(before)s)
   AND (NOT %(scheduled)s OR (status = 'queued' AND run_at > now()))
 ORDER BY id DESC
 LIMIT %(limit)s

-- name: run_attempts
-- The worker by the name it logs and `pgqueue status` shows (its id when its row is gone).
SELECT a.attempt, a.worker_id::text, w.name AS worker_name, a.started_at, a.finished_at, a.outcome,
       a.error_type, a.error_message, a.traceback, a.logs
  FROM pgqueue.attempts a
  LEFT JOIN pgqueue.workers w ON w.id = a.worker_id
 WHERE a.run_id = %s
 ORDER BY a.attempt

-- name: run_steps
-- A durable run's checkpointed steps in call order (the first 500: a loop of steps can be long).
SELECT step_key, name, status, attempts, started_at, finished_at, error, output
  FROM pgqueue.steps
 WHERE run_id = %s
 ORDER BY seq, step_key
 LIMIT 500

-- name: reschedule_run
SELECT pgqueue.reschedule_run(%s, %s)

-- name: cancel_run
SELECT pgqueue.cancel_run(%s)

-- name: replay_run
SELECT pgqueue.replay_run(%s, %s)

-- name: pruned_up_to
-- The largest run id pruned by retention so far (NULL: none).
SELECT max(max_pruned_id) FROM pgqueue.prune_stats
