-- Queries about queues and the workers serving them: status, pausing.

-- name: queue_status
-- Per queue: due and scheduled runs waiting, running, failed in the last hour, oldest wait.
WITH waiting AS (
    SELECT queue,
           count(*) FILTER (WHERE run_at <= now()) AS queued,
           count(*) FILTER (WHERE run_at > now()) AS scheduled,
           extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8 AS oldest_wait_s
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
SELECT queue, coalesce(queued, 0) AS queued, coalesce(scheduled, 0) AS scheduled, coalesce(running, 0) AS running,
       coalesce(failed_1h, 0) AS failed_last_hour, oldest_wait_s, queue IN (SELECT queue FROM paused) AS paused
  FROM waiting FULL JOIN running USING (queue) FULL JOIN failed USING (queue) FULL JOIN paused USING (queue)
 ORDER BY queue

-- name: workers_alive
SELECT name, host, pid, queues, concurrency, extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s,
       (SELECT count(*) FROM pgqueue.runs r WHERE r.worker_id = w.id AND r.status = 'running') AS running,
       labels, version
  FROM pgqueue.workers w
 WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => lease_s)
 ORDER BY name

-- name: pause_queue
SELECT pgqueue.pause_queue(%s)

-- name: resume_queue
SELECT pgqueue.resume_queue(%s)
