-- Usage reported by runs (pgqueue/usage.py, sql/functions/usage.sql).

-- name: report
SELECT pgqueue.report_usage(%(run)s, %(attempt)s, %(units)s, %(step)s)

-- name: sync_unit
-- The usage unit declared in code; one set at runtime (source 'runtime') is kept, unless none is.
UPDATE pgqueue.rate_limits r SET usage_unit = %(unit)s
 WHERE r.name = %(name)s AND r.key = '' AND r.usage_unit IS DISTINCT FROM %(unit)s
   AND (r.source = 'code' OR r.usage_unit IS NULL)

-- name: set_unit
SELECT pgqueue.set_rate_limit_usage(%(name)s, %(unit)s)

-- name: summary
-- Per task and unit, and per concurrency key or run when asked (`by`); reported since `since`.
SELECT u.task,
       CASE %(by)s WHEN 'key' THEN coalesce(u.concurrency_key, '-') WHEN 'run' THEN u.run_id::text END AS "group",
       u.unit, sum(u.amount) AS amount, count(DISTINCT u.run_id) AS runs, count(*) AS reports,
       max(u.reported_at) AS last_at
  FROM pgqueue.usage u
 WHERE (%(task)s::text IS NULL OR u.task = %(task)s) AND (%(since)s::timestamptz IS NULL OR u.reported_at >= %(since)s)
 GROUP BY 1, 2, 3
 ORDER BY 3, 4 DESC, 1, 2  -- per unit, the biggest first
 LIMIT %(limit)s

-- name: of_run
SELECT step_key, unit, sum(amount) AS amount, count(*) AS reports
  FROM pgqueue.usage WHERE run_id = %(run)s
 GROUP BY 1, 2
 ORDER BY min(reported_at), 1, 2

-- name: totals
SELECT task, unit, amount FROM pgqueue.usage_totals ORDER BY task, unit
