-- Retention policies and pruning (functions in sql/functions/retention.sql).

-- name: sync_task
-- A task's policy from code; a policy set at runtime is kept.
INSERT INTO pgqueue.retention_policies AS p (task, status, keep, source)
VALUES (%(task)s, %(status)s, make_interval(secs => %(seconds)s), 'code')
ON CONFLICT (task, status) DO UPDATE
   SET keep = excluded.keep, updated_at = now()
 WHERE p.source = 'code' AND p.keep IS DISTINCT FROM excluded.keep

-- name: drop_task_code
-- Code policies of a task that its code no longer declares (runtime ones stay).
DELETE FROM pgqueue.retention_policies
 WHERE task = %(task)s AND source = 'code' AND NOT (status = ANY(%(statuses)s::text[]))

-- name: set
SELECT pgqueue.set_retention(make_interval(secs => %(seconds)s), %(status)s, %(task)s)

-- name: unset
SELECT pgqueue.unset_retention(%(task)s, %(status)s)

-- name: policies
SELECT task, status, extract(epoch FROM keep)::float8 AS seconds, source
  FROM pgqueue.retention_policies
 ORDER BY task = '*' DESC, task, array_position(ARRAY['succeeded', 'failed', 'cancelled', 'dead', 'events'], status)

-- name: prune
SELECT trees, runs, attempts, steps, event_waits, cron_ticks, events
  FROM pgqueue.prune(%(batch_size)s, %(dry_run)s)

-- name: prune_exclusive
-- One batch, unless another pruner holds the pruning lock (then no row: skip this pass). The
-- lock is the transaction's, released when this statement commits.
SELECT p.trees, p.runs, p.attempts, p.steps, p.event_waits, p.cron_ticks, p.events
  FROM (SELECT pg_try_advisory_xact_lock(hashtext('pgqueue.prune')) AS got) l
  CROSS JOIN LATERAL (SELECT * FROM pgqueue.prune(%(batch_size)s) WHERE l.got) p

-- name: last_prune
-- The newest call that removed something, the newest call at all, and the totals.
SELECT (SELECT max(last_called_at) FROM pgqueue.prune_stats) AS last_called_at,
       n.last_pruned_at, coalesce(n.last_trees, 0) AS last_trees, coalesce(n.last_runs, 0) AS last_runs,
       coalesce(n.last_events, 0) AS last_events,
       (SELECT coalesce(sum(total_trees), 0) FROM pgqueue.prune_stats)::bigint AS total_trees,
       (SELECT coalesce(sum(total_runs), 0) FROM pgqueue.prune_stats)::bigint AS total_runs,
       (SELECT coalesce(sum(total_events), 0) FROM pgqueue.prune_stats)::bigint AS total_events
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (SELECT * FROM pgqueue.prune_stats WHERE last_pruned_at IS NOT NULL
                      ORDER BY last_pruned_at DESC LIMIT 1) n ON true
