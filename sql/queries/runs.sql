-- Queries of the client: enqueueing runs and reading them back.

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
    rate_costs => %(rate_costs)s::text[]::jsonb[])

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
    rate_cost => %(rate_cost)s::jsonb)

-- name: get_run
SELECT id, task, queue, priority, status, input, result, error, run_at, created_at,
       started_at, finished_at, attempt, recoveries, idempotency_key, tags, metadata,
       parent_id, children_total, children_pending
  FROM pgqueue.runs
 WHERE id = %s

-- name: register_task
INSERT INTO pgqueue.tasks (name, queue, priority, schedule_to_start)
VALUES (%s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE
   SET queue = excluded.queue, priority = excluded.priority,
       schedule_to_start = excluded.schedule_to_start, updated_at = now()
 WHERE (tasks.queue, tasks.priority, tasks.schedule_to_start)
       IS DISTINCT FROM (excluded.queue, excluded.priority, excluded.schedule_to_start)

-- name: listen_done
LISTEN pgqueue_done
