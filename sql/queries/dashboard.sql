-- Read-only queries of the web dashboard (pgqueue/dashboard). Plain SELECTs through indexes: no
-- row locks, nothing that slows the workers. Actions call the SQL API functions (runs.sql, queues.sql).
-- Optional filters are `param IS NULL OR ...`: the dashboard runs them with custom plans, so
-- the planner folds the unused ones away and picks the index of the filter that is set.

-- name: serial_plans
-- A list page stops at its LIMIT: a parallel plan only makes every worker scan its share of the
-- index to the end (200 ms instead of 0.1 ms on 1,000,000 runs) and takes backends from the workers.
SET LOCAL max_parallel_workers_per_gather = 0

-- name: list_runs
-- Keyset paging by id (never OFFSET). The `<> '{}'` conditions repeat the predicates of the
-- partial GIN indexes so the planner can use them.
SELECT id, task, queue, status, attempt, created_at, started_at, finished_at, error ->> 'type' AS error_type,
       tags, concurrency_key
  FROM pgqueue.runs
 WHERE (%(task)s::text IS NULL OR task = %(task)s)
   AND (%(status)s::text IS NULL OR status = %(status)s)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s)
   AND (%(tag)s::text IS NULL OR (tags @> ARRAY[%(tag)s::text] AND tags <> '{}'))
   AND (%(metadata)s::jsonb IS NULL OR (metadata @> %(metadata)s::jsonb AND metadata <> '{}'))
   AND (%(concurrency_key)s::text IS NULL OR concurrency_key = %(concurrency_key)s)
   AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
   AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
   AND (%(before)s::bigint IS NULL OR id < %(before)s)
 ORDER BY id DESC
 LIMIT %(limit)s

-- name: run_extras
-- What the run page shows beyond runs.get_run.
SELECT concurrency_key, workflow_node, cancel_requested, worker_id::text AS worker_id, root_id
  FROM pgqueue.runs
 WHERE id = %(run)s

-- name: run_waits
SELECT event_name, event_key, since, timeout_at
  FROM pgqueue.event_waits
 WHERE run_id = %(run)s
 ORDER BY seq

-- name: children_by_status
SELECT status, count(*) FROM pgqueue.runs WHERE parent_id = %(run)s GROUP BY status

-- name: children
SELECT id, task, status, workflow_node, created_at, finished_at
  FROM pgqueue.runs
 WHERE parent_id = %(run)s
 ORDER BY id
 LIMIT %(limit)s

-- name: workflow_nodes
-- Nodes of a workflow run that have started; a node's input is keyed by its parents' names.
SELECT workflow_node AS node, id, status, (SELECT array_agg(k) FROM jsonb_object_keys(input) AS k) AS input_keys,
       started_at, finished_at
  FROM pgqueue.runs
 WHERE parent_id = %(run)s AND workflow_node IS NOT NULL
 ORDER BY id

-- name: activity
-- Runs finished in the last hour per minute: counts and end-to-end latency (created -> finished).
SELECT floor(extract(epoch FROM finished_at - (now() - interval '1 hour')) / 60)::int AS minute,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status IN ('failed', 'dead')) AS failed,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) AS p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) AS p95_s
  FROM pgqueue.runs
 WHERE finished_at > now() - interval '1 hour' AND finished_at IS NOT NULL
 GROUP BY 1
 ORDER BY 1

-- name: workers
-- Live workers, and those stopped or lost in the last hour.
SELECT name, host, pid, queues, concurrency, extract(epoch FROM now() - heartbeat_at) AS heartbeat_age_s,
       CASE WHEN stopped_at IS NOT NULL THEN 'stopped'
            WHEN heartbeat_at > now() - make_interval(secs => lease_s) THEN 'alive'
            ELSE 'lost' END AS state,
       (SELECT count(*) FROM pgqueue.runs r WHERE r.worker_id = w.id AND r.status = 'running') AS running,
       started_at, labels, version
  FROM pgqueue.workers w
 WHERE stopped_at IS NULL OR stopped_at > now() - interval '1 hour'
 ORDER BY stopped_at IS NOT NULL, name
 LIMIT 500

-- name: paused_queues
SELECT name, updated_at FROM pgqueue.queues WHERE paused ORDER BY name

-- name: now
SELECT now()
