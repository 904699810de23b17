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
-- this attempt on this worker; the rows returned are the outcomes that were applied, with the
-- status written (a retry refused by the checks below comes back 'failed') and its error.
-- Fence: the UPDATE's own row lock, held until commit; a concurrent rescue, cancel or step fence
-- (FOR SHARE, see durable.sql) either waits for it or is waited for, and under READ COMMITTED the
-- WHERE is re-checked on the row as that other writer left it.
-- A retry (status 'queued') is refused, and the run fails instead, when it would break one of
-- the run's bounds: too many RetryLater requests in a row (the task's max_retry_later), too
-- many interrupted attempts (max_interruptions), a next attempt after the run's deadline, or
-- a retry-later past its schedule-to-start window.
WITH outcome AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(statuses)s::text[],
                         %(attempt_outcomes)s::text[], %(results)s::text[], %(errors)s::text[],
                         %(delays)s::float8[], %(failed)s::int[], %(logs)s::text[],
                         %(retry_later)s::int[], %(retry_later_caps)s::int[], %(interrupted)s::int[])
           AS o(id, attempt, status, attempt_outcome, result, error, delay, failed, logs,
                retry_later, retry_later_cap, interrupted)
), checked AS (
    -- these columns of the run change only through this fenced statement: the snapshot is current
    SELECT o.*, CASE
        WHEN o.status <> 'queued' THEN NULL
        WHEN o.retry_later = 1 AND r.retry_laters + 1 > o.retry_later_cap THEN jsonb_build_object(
            'type', 'RetryLaterLimit',
            'message', format('the task asked to retry later %%s times in a row (RetryLater or RateLimited), '
                              'more than its limit of %%s; raise it with @app.task(max_retry_later=N) if '
                              'the provider needs longer, or fail the run from the task',
                              r.retry_laters + 1, o.retry_later_cap),
            'last_request', o.error::jsonb ->> 'message')
        WHEN o.interrupted = 1 AND r.interruptions + 1 > %(max_interruptions)s THEN jsonb_build_object(
            'type', 'InfrastructureFailure',
            'message', format('%%s attempts were cut off by database failures (connection dropped or '
                              'server restarted), more than the worker''s max_interruptions of %%s; '
                              'last: %%s', r.interruptions + 1, %(max_interruptions)s,
                              o.error::jsonb ->> 'message'))
        WHEN r.deadline_at IS NOT NULL AND now() + make_interval(secs => o.delay) >= r.deadline_at
            THEN jsonb_build_object(
            'type', 'DeadlineExceeded',
            'message', format('the run''s deadline (%%s, set by the task''s deadline=) passes before its '
                              'next attempt; raise the task''s deadline to let it retry longer. Last '
                              'attempt: %%s', r.deadline_at, o.error::jsonb ->> 'message'))
        WHEN o.retry_later = 1 AND r.expires_at IS NOT NULL
             AND now() + make_interval(secs => o.delay) > r.expires_at THEN jsonb_build_object(
            'type', 'Expired',
            'message', format('the run asked to retry later, after its schedule-to-start window ends '
                              '(%%s); raise the task''s schedule_to_start to let it wait longer', r.expires_at))
        END AS stop
      FROM outcome o JOIN pgqueue.runs r ON r.id = o.id
), applied AS (
    UPDATE pgqueue.runs AS run
       SET status = CASE WHEN o.stop IS NULL THEN o.status ELSE 'failed' END,
           result = o.result::jsonb,
           error = coalesce(o.stop, o.error::jsonb,
                            CASE WHEN o.status = 'succeeded' THEN NULL ELSE run.error END),
           failures = run.failures + o.failed,
           retry_laters = CASE WHEN o.retry_later = 1 THEN run.retry_laters + 1 ELSE 0 END,
           interruptions = run.interruptions + o.interrupted,
           finished_at = CASE WHEN o.status = 'queued' AND o.stop IS NULL THEN NULL ELSE now() END,
           run_at = CASE WHEN o.status = 'queued' AND o.stop IS NULL
                         THEN now() + make_interval(secs => o.delay) ELSE run.run_at END,
           worker_id = NULL,
           lease_expires_at = NULL
      FROM checked o
     WHERE run.id = o.id AND run.attempt = o.attempt AND run.status = 'running'
       AND run.worker_id = %(worker)s
    RETURNING run.id, run.status, run.queue, run.priority, run.run_at, run.task, run.concurrency_key,
              run.attempt, run.attempt_started_at, run.parent_id, run.error
), requeued AS (
    INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
    SELECT id, queue, priority, run_at, task, concurrency_key FROM applied WHERE status = 'queued'
    RETURNING queue, run_at
), recorded AS (
    INSERT INTO pgqueue.attempts (run_id, attempt, worker_id, started_at, finished_at, outcome,
                                  error_type, error_message, traceback, logs)
    SELECT a.id, a.attempt, %(worker)s, coalesce(a.attempt_started_at, now()), now(),
           CASE WHEN o.stop IS NULL THEN o.attempt_outcome
                WHEN o.attempt_outcome = 'interrupted' THEN 'interrupted' ELSE 'failed' END,
           coalesce(o.stop, o.error::jsonb) ->> 'type', coalesce(o.stop, o.error::jsonb) ->> 'message',
           o.error::jsonb ->> 'traceback', o.logs
      FROM applied a JOIN checked o ON o.id = a.id
    ON CONFLICT (run_id, attempt) DO NOTHING
), woken AS (
    SELECT pg_notify('pgqueue_ready', queue) FROM (SELECT DISTINCT queue FROM requeued WHERE run_at <= now()) q
), done AS (
    SELECT pg_notify('pgqueue_done', '') WHERE EXISTS (SELECT 1 FROM applied WHERE status <> 'queued')
), parents AS (
    SELECT pgqueue.finish_children(array_agg(parent_id)) FROM applied
     WHERE parent_id IS NOT NULL AND status IN ('succeeded', 'failed', 'cancelled', 'dead')
)
SELECT id, status, error ->> 'type' AS error_type, error ->> 'message' AS error_message
  FROM applied, (SELECT count(*) FROM woken) w, (SELECT count(*) FROM done) d,
       (SELECT count(*) FROM parents) p

-- name: heartbeat
-- Extend the leases of the runs this worker still holds; a run missing from the answer was
-- taken away (rescued or cancelled) and must not be finished by this worker.
-- Fence: the UPDATE's row lock (as for complete); the rescue's FOR UPDATE re-checks the expired
-- lease on the row a committed beat left, and skips a row being beaten.
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

-- name: expire_deadlines
-- Runs past their run-level deadline fail as DeadlineExceeded whatever they are doing: queued,
-- sleeping or waiting (no further attempt starts), or running (the attempt is failed; its
-- worker learns at its next heartbeat that it lost the run, and abandons the attempt).
WITH late AS MATERIALIZED (
    SELECT run.id, run.status, run.worker_id, run.attempt, run.attempt_started_at, run.deadline_at
      FROM pgqueue.runs run
     WHERE run.deadline_at < now() AND run.deadline_at IS NOT NULL
       AND run.status IN ('queued', 'running', 'sleeping', 'waiting')
     ORDER BY run.deadline_at
     LIMIT 500
       FOR UPDATE SKIP LOCKED
), removed AS (
    DELETE FROM pgqueue.ready r USING late WHERE r.run_id = late.id
), failed AS (
    UPDATE pgqueue.runs AS run
       SET status = 'failed', finished_at = now(), worker_id = NULL, lease_expires_at = NULL,
           error = jsonb_build_object(
               'type', 'DeadlineExceeded',
               'message', format('the run did not finish by its deadline (%%s, the task''s deadline= '
                                 'counted from its creation; it was %%s); no further attempt starts. '
                                 'Raise the task''s deadline if its runs need longer', late.deadline_at,
                                 late.status))
      FROM late
     WHERE run.id = late.id
    RETURNING run.id, run.parent_id
), recorded AS (
    INSERT INTO pgqueue.attempts (run_id, attempt, worker_id, started_at, finished_at, outcome,
                                  error_type, error_message)
    SELECT id, attempt, worker_id, coalesce(attempt_started_at, now()), now(), 'timeout', 'DeadlineExceeded',
           'the run''s deadline passed while this attempt ran'
      FROM late WHERE status = 'running'
    ON CONFLICT (run_id, attempt) DO NOTHING
), done AS (
    SELECT pg_notify('pgqueue_done', '') WHERE EXISTS (SELECT 1 FROM failed)
), parents AS (
    SELECT pgqueue.finish_children(array_agg(parent_id)) FROM failed WHERE parent_id IS NOT NULL
)
SELECT id FROM failed, (SELECT count(*) FROM done) d, (SELECT count(*) FROM parents) p

-- name: hand_back
-- Graceful shutdown: give unfinished runs back to the queue at once, without counting a failure.
-- Fence: the UPDATE's row lock (as for complete).
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
