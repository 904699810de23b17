-- Queries for inspecting and acting on runs (CLI, and later the dashboard).

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
SELECT attempt, worker_id::text, started_at, finished_at, outcome, error_type, error_message, traceback, logs
  FROM pgqueue.attempts
 WHERE run_id = %s
 ORDER BY attempt

-- name: reschedule_run
SELECT pgqueue.reschedule_run(%s, %s)

-- name: cancel_run
SELECT pgqueue.cancel_run(%s)

-- name: replay_run
SELECT pgqueue.replay_run(%s, %s)

-- name: queue_status
-- Per queue: due and scheduled runs waiting, running, failed in the last hour, oldest wait.
WITH waiting AS (
    SELECT queue,
           count(*) FILTER (WHERE run_at <= now()) AS queued,
           count(*) FILTER (WHERE run_at > now()) AS scheduled,
           extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now())) AS oldest_wait_s
      FROM pgqueue.ready GROUP BY queue
), running AS (
    SELECT queue, count(*) AS running FROM pgqueue.runs WHERE status = 'running' GROUP BY queue
), failed AS (
    SELECT queue, count(*) AS failed_1h FROM pgqueue.runs
     WHERE status IN ('failed', 'dead') AND finished_at > now() - interval '1 hour'
     GROUP BY queue
), paused AS (
    SELECT name AS queue FROM pgqueue.queues WHERE paused
)
SELECT queue, coalesce(queued, 0), coalesce(scheduled, 0), coalesce(running, 0), coalesce(failed_1h, 0),
       oldest_wait_s, queue IN (SELECT queue FROM paused)
  FROM waiting FULL JOIN running USING (queue) FULL JOIN failed USING (queue) FULL JOIN paused USING (queue)
 ORDER BY queue

-- name: pause_queue
SELECT pgqueue.pause_queue(%s)

-- name: resume_queue
SELECT pgqueue.resume_queue(%s)

-- name: workers_alive
SELECT name, host, pid, queues, concurrency, extract(epoch FROM now() - heartbeat_at) AS heartbeat_age_s,
       (SELECT count(*) FROM pgqueue.runs r WHERE r.worker_id = w.id AND r.status = 'running') AS running
  FROM pgqueue.workers w
 WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => lease_s)
 ORDER BY name
