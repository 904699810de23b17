-- Queries of the worker. All times come from the database clock (now()).
-- Every change of a run's state names the state (and attempt and worker) it expects, so a
-- late or concurrent writer can never overwrite a newer outcome.

-- name: register_worker
INSERT INTO pgqueue.workers (id, name, host, pid, queues, concurrency, lease_s)
VALUES (%(id)s, %(name)s, %(host)s, %(pid)s, %(queues)s, %(concurrency)s, %(lease_s)s)

-- name: stop_worker
UPDATE pgqueue.workers SET stopped_at = now(), heartbeat_at = now() WHERE id = %(id)s

-- name: claim
-- Lease up to `limit` due runs of the served queues to this worker (pgqueue.claim, in
-- sql/functions/claim.sql, applies priorities, fairness, concurrency and rate limits).
-- The input comes as text: the executor decodes each run's on its own, so that one that cannot
-- be decoded fails alone instead of failing the fetch of the whole batch.
SELECT id, task, input::text AS input, attempt, failures, expired, queue
  FROM pgqueue.claim(%(worker)s, %(queues)s::text[], %(limit)s, %(lease_s)s)

-- name: trace_contexts
-- Only when tracing is on: where each claimed run's enqueue put its trace context.
SELECT id, trace_context FROM pgqueue.runs WHERE id = ANY(%(ids)s::bigint[])

-- name: complete
-- Record a batch of outcomes. An outcome is applied only while the run is still running
-- this attempt on this worker; the ids returned are the outcomes that were applied.
WITH outcome AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(statuses)s::text[],
                         %(attempt_outcomes)s::text[], %(results)s::text[], %(errors)s::text[],
                         %(delays)s::float8[], %(failed)s::int[], %(logs)s::text[])
           AS o(id, attempt, status, attempt_outcome, result, error, delay, failed, logs)
), applied AS (
    UPDATE pgqueue.runs AS run
       SET status = o.status,
           result = o.result::jsonb,
           error = coalesce(o.error::jsonb, CASE WHEN o.status = 'succeeded' THEN NULL ELSE run.error END),
           failures = run.failures + o.failed,
           finished_at = CASE WHEN o.status = 'queued' THEN NULL ELSE now() END,
           run_at = CASE WHEN o.status = 'queued' THEN now() + make_interval(secs => o.delay) ELSE run.run_at END,
           worker_id = NULL,
           lease_expires_at = NULL
      FROM outcome o
     WHERE run.id = o.id AND run.attempt = o.attempt AND run.status = 'running'
       AND run.worker_id = %(worker)s
    RETURNING run.id, run.status, run.queue, run.priority, run.run_at, run.task, run.concurrency_key,
              run.attempt, run.attempt_started_at, run.parent_id
), requeued AS (
    INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
    SELECT id, queue, priority, run_at, task, concurrency_key FROM applied WHERE status = 'queued'
    RETURNING queue, run_at
), recorded AS (
    INSERT INTO pgqueue.attempts (run_id, attempt, worker_id, started_at, finished_at, outcome,
                                  error_type, error_message, traceback, logs)
    SELECT a.id, a.attempt, %(worker)s, coalesce(a.attempt_started_at, now()), now(), o.attempt_outcome,
           o.error::jsonb ->> 'type', o.error::jsonb ->> 'message', o.error::jsonb ->> 'traceback', o.logs
      FROM applied a JOIN outcome o ON o.id = a.id
    ON CONFLICT (run_id, attempt) DO NOTHING
), woken AS (
    SELECT pg_notify('pgqueue_ready', queue) FROM (SELECT DISTINCT queue FROM requeued WHERE run_at <= now()) q
), done AS (
    SELECT pg_notify('pgqueue_done', '') WHERE EXISTS (SELECT 1 FROM applied WHERE status <> 'queued')
), parents AS (
    SELECT pgqueue.finish_children(array_agg(parent_id)) FROM applied
     WHERE parent_id IS NOT NULL AND status IN ('succeeded', 'failed', 'cancelled', 'dead')
)
SELECT id FROM applied, (SELECT count(*) FROM woken) w, (SELECT count(*) FROM done) d,
       (SELECT count(*) FROM parents) p

-- name: heartbeat
-- Extend the leases of the runs this worker still holds; a run missing from the answer was
-- taken away (rescued or cancelled) and must not be finished by this worker.
WITH beat AS (
    UPDATE pgqueue.workers SET heartbeat_at = now() WHERE id = %(worker)s
)
UPDATE pgqueue.runs AS run
   SET lease_expires_at = now() + make_interval(secs => %(lease_s)s)
  FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS held(id, attempt)
 WHERE run.id = held.id AND run.attempt = held.attempt AND run.status = 'running'
   AND run.worker_id = %(worker)s
RETURNING run.id, run.cancel_requested

-- name: rescue
-- Runs whose lease expired belong to a worker that is gone: queue them again (counted as a
-- recovery, not a failure), or mark them dead after too many recoveries.
WITH lost AS MATERIALIZED (
    SELECT id, worker_id, attempt, attempt_started_at
      FROM pgqueue.runs
     WHERE status = 'running' AND lease_expires_at < now()
     ORDER BY lease_expires_at
     LIMIT 500
       FOR UPDATE SKIP LOCKED
), rescued AS (
    UPDATE pgqueue.runs AS run
       SET recoveries = run.recoveries + 1,
           status = CASE WHEN run.recoveries + 1 > %(max_recoveries)s THEN 'dead' ELSE 'queued' END,
           error = CASE WHEN run.recoveries + 1 > %(max_recoveries)s
                        THEN jsonb_build_object(
                            'type', 'CrashLoop',
                            'message', format('the worker running this run was lost %%s times '
                                              '(killed, out of memory or cut off); giving up',
                                              run.recoveries + 1))
                        ELSE run.error END,
           finished_at = CASE WHEN run.recoveries + 1 > %(max_recoveries)s THEN now() END,
           run_at = now(),
           worker_id = NULL,
           lease_expires_at = NULL
      FROM lost
     WHERE run.id = lost.id AND run.status = 'running' AND run.attempt = lost.attempt
    RETURNING run.id, run.status, run.queue, run.priority, run.run_at, run.task, run.concurrency_key,
              run.parent_id
), requeued AS (
    INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
    SELECT id, queue, priority, run_at, task, concurrency_key FROM rescued WHERE status = 'queued'
    RETURNING queue
), recorded AS (
    INSERT INTO pgqueue.attempts (run_id, attempt, worker_id, started_at, finished_at, outcome,
                                  error_type, error_message)
    SELECT lost.id, lost.attempt, lost.worker_id, coalesce(lost.attempt_started_at, now()), now(), 'crashed',
           'WorkerLost', 'the lease expired: the worker stopped heart-beating (killed, hung or cut off)'
      FROM lost JOIN rescued ON rescued.id = lost.id
    ON CONFLICT (run_id, attempt) DO NOTHING
), woken AS (
    SELECT pg_notify('pgqueue_ready', queue) FROM (SELECT DISTINCT queue FROM requeued) q
), parents AS (
    SELECT pgqueue.finish_children(array_agg(parent_id)) FROM rescued
     WHERE parent_id IS NOT NULL AND status = 'dead'
)
SELECT id, status FROM rescued, (SELECT count(*) FROM woken) w, (SELECT count(*) FROM parents) p

-- name: expire
-- Runs that waited longer than their schedule-to-start window fail as expired.
WITH expired AS (
    SELECT run.id FROM pgqueue.runs run
     WHERE run.status = 'queued' AND run.expires_at < now()
     ORDER BY run.expires_at
     LIMIT 500
       FOR UPDATE SKIP LOCKED
), removed AS (
    DELETE FROM pgqueue.ready r USING expired WHERE r.run_id = expired.id RETURNING r.run_id
), failed AS (
    UPDATE pgqueue.runs AS run
       SET status = 'failed', finished_at = now(),
           error = jsonb_build_object('type', 'Expired',
                                      'message', 'the run did not start within its schedule-to-start window')
      FROM removed
     WHERE run.id = removed.run_id
    RETURNING run.id, run.parent_id
), parents AS (
    SELECT pgqueue.finish_children(array_agg(parent_id)) FROM failed WHERE parent_id IS NOT NULL
)
SELECT id FROM failed, (SELECT count(*) FROM parents) p

-- name: hand_back
-- Graceful shutdown: give unfinished runs back to the queue at once, without counting a failure.
WITH held AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS h(id, attempt)
), returned AS (
    UPDATE pgqueue.runs AS run
       SET status = 'queued', run_at = now(), worker_id = NULL, lease_expires_at = NULL
      FROM held
     WHERE run.id = held.id AND run.attempt = held.attempt AND run.status = 'running'
       AND run.worker_id = %(worker)s
    RETURNING run.id, run.queue, run.priority, run.run_at, run.task, run.concurrency_key,
              run.attempt, run.attempt_started_at
), requeued AS (
    INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
    SELECT id, queue, priority, run_at, task, concurrency_key FROM returned
), recorded AS (
    INSERT INTO pgqueue.attempts (run_id, attempt, worker_id, started_at, finished_at, outcome, error_message)
    SELECT id, attempt, %(worker)s, coalesce(attempt_started_at, now()), now(), 'handed_back',
           'the worker shut down before the run finished; handed back to the queue'
      FROM returned
    ON CONFLICT (run_id, attempt) DO NOTHING
), woken AS (
    SELECT pg_notify('pgqueue_ready', queue) FROM (SELECT DISTINCT queue FROM returned) q
)
SELECT id FROM returned, (SELECT count(*) FROM woken) w
