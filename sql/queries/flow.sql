-- Flow control: limits declared in code, runtime edits, holds, and what `status` shows.

-- name: register_flow
UPDATE pgqueue.tasks
   SET concurrency_key_field = %(concurrency_key_field)s, concurrency_python_only = %(concurrency_python_only)s,
       rate_limits = %(rate_limits)s::jsonb, updated_at = now()
 WHERE name = %(task)s
   AND (concurrency_key_field, concurrency_python_only, rate_limits)
       IS DISTINCT FROM (%(concurrency_key_field)s, %(concurrency_python_only)s, %(rate_limits)s::jsonb)

-- name: sync_concurrency
-- A task's default limit from code; a default set at runtime is kept.
INSERT INTO pgqueue.concurrency_limits AS l (name, key, max_running, strategy, source)
VALUES (%s, '*', %s, %s, 'code')
ON CONFLICT (name, key) DO UPDATE
   SET max_running = excluded.max_running, strategy = excluded.strategy, updated_at = now()
 WHERE l.source = 'code' AND (l.max_running, l.strategy) IS DISTINCT FROM (excluded.max_running, excluded.strategy)

-- name: sync_rate_limit
INSERT INTO pgqueue.rate_limits AS r (name, key, capacity, refill_per_s, tokens, source)
VALUES (%s, '', %s, %s, %s, 'code')
ON CONFLICT ON CONSTRAINT rate_limits_pkey DO UPDATE
   SET capacity = excluded.capacity, refill_per_s = excluded.refill_per_s,
       tokens = least(r.tokens, excluded.capacity)
 WHERE r.source = 'code' AND (r.capacity, r.refill_per_s) IS DISTINCT FROM (excluded.capacity, excluded.refill_per_s)

-- name: propagate_rate_limit
SELECT pgqueue.propagate_rate_limit(%s)

-- name: set_concurrency
SELECT pgqueue.set_concurrency_limit(%s, %s, %s, %s)

-- name: delete_concurrency
SELECT pgqueue.delete_concurrency_limit(%s, %s)

-- name: set_rate_limit
SELECT pgqueue.set_rate_limit(%s, %s, %s, %s, %s)

-- name: hold
SELECT pgqueue.hold_rate_limit(%s, %s, %s)

-- name: concurrency_status
-- Per (task, key): running and queued runs against the effective limit (the key's own row, else
-- the task's '*' row), for keys with runs and for every limit row; the busiest first.
WITH running AS (
    SELECT task, concurrency_key AS key, count(*) AS running
      FROM pgqueue.runs WHERE status = 'running' AND concurrency_key IS NOT NULL
     GROUP BY 1, 2
), queued AS (
    SELECT task, concurrency_key AS key, count(*) AS queued
      FROM pgqueue.ready WHERE concurrency_key IS NOT NULL
     GROUP BY 1, 2
), keys AS (
    SELECT task, key FROM running UNION SELECT task, key FROM queued
    UNION SELECT name, key FROM pgqueue.concurrency_limits
)
SELECT k.task, k.key, coalesce(r.running, 0) AS running, l.max_running, l.strategy, coalesce(q.queued, 0) AS queued
  FROM keys k
  LEFT JOIN running r USING (task, key)
  LEFT JOIN queued q USING (task, key)
  LEFT JOIN LATERAL pgqueue.concurrency_limit_of(k.task, k.key) l ON true
 ORDER BY coalesce(r.running, 0) DESC, coalesce(q.queued, 0) DESC, 1, 2
 LIMIT %(limit)s

-- name: rate_status
-- Buckets with their tokens refilled to now, and when a run needing one unit can start.
SELECT name, key, least(capacity, tokens + refill_per_s * extract(epoch FROM now() - refilled_at)) AS available,
       capacity, refill_per_s AS per_second, CASE WHEN held_until > now() THEN held_until END AS held_until,
       greatest(now(), held_until,
                now() + make_interval(secs => greatest(0, 1 - (tokens + refill_per_s
                                                              * extract(epoch FROM now() - refilled_at)))
                                            / refill_per_s)) AS next_start
  FROM pgqueue.rate_limits
 ORDER BY name, key
 LIMIT %(limit)s

-- name: list_concurrency_limits
SELECT name AS task, key, max_running, strategy, source FROM pgqueue.concurrency_limits ORDER BY name, key = '*' DESC, key

-- name: waiting_metrics
-- Per task: due queued runs whose key is at its limit (they wait for a slot). Reads only the
-- queued runs of saturated keys (ready_key), never the whole backlog.
WITH running AS (
    SELECT task, concurrency_key AS key, count(*) AS n
      FROM pgqueue.runs WHERE status = 'running' AND concurrency_key IS NOT NULL
     GROUP BY 1, 2
), saturated AS (
    SELECT r.task, r.key FROM running r
     CROSS JOIN LATERAL pgqueue.concurrency_limit_of(r.task, r.key) l
     WHERE r.n >= l.max_running
)
SELECT s.task, count(q.run_id)
  FROM saturated s
  JOIN pgqueue.ready q ON q.task = s.task AND q.concurrency_key = s.key AND q.run_at <= now()
 GROUP BY 1

-- name: rate_metrics
-- Per rate limit: units available in its shared bucket, keys on hold, runs deferred so far.
SELECT name,
       sum(least(capacity, tokens + refill_per_s * extract(epoch FROM now() - refilled_at)))
           FILTER (WHERE key = '') AS available,
       count(*) FILTER (WHERE held_until > now()) AS held_keys,
       sum(deferred_total) AS deferred
  FROM pgqueue.rate_limits
 GROUP BY name
