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
-- labels: the worker's placement labels (NULL for a worker without labels or version).
SELECT id, task, input::text AS input, attempt, failures, expired, queue
  FROM pgqueue.claim(%(worker)s, %(queues)s::text[], %(limit)s, %(lease_s)s, %(labels)s::text[])

-- name: trace_contexts
-- Only when tracing is on: where each claimed run's enqueue put its trace context.
SELECT id, trace_context FROM pgqueue.runs WHERE id = ANY(%(ids)s::bigint[])

-- name: complete
-- Record a batch of outcomes (pgqueue.record_outcomes, in sql/functions/outcomes.sql): the rows
-- returned are the outcomes that were applied, with the status written and its error.
SELECT id, status, error_type, error_message
  FROM pgqueue.record_outcomes(%(worker)s, %(outcomes)s::jsonb, %(ids)s::bigint[], %(max_interruptions)s)

-- name: heartbeat
-- Extend the leases of the runs this worker still holds; a run missing from the answer was
-- taken away (rescued or cancelled) and must not be finished by this worker.
-- Fence: the row lock taken in `still` (as for complete), in the ids' order (sorted by the
-- worker, as the completer's); the rescue's FOR UPDATE re-checks the expired lease on the row a
-- committed beat left, and skips a row being beaten. Each held run is found by id (LATERAL),
-- never by scanning the whole fleet's running runs.
WITH beat AS (
    UPDATE pgqueue.workers SET heartbeat_at = now() WHERE id = %(worker)s
), still AS (
    SELECT r.id FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS held(id, attempt)
     CROSS JOIN LATERAL (
        SELECT r.id FROM pgqueue.runs r
         WHERE r.id = held.id AND r.attempt = held.attempt AND r.status = 'running'
           AND r.worker_id = %(worker)s
           FOR NO KEY UPDATE) AS r
)
UPDATE pgqueue.runs AS run
   SET lease_expires_at = now() + make_interval(secs => %(lease_s)s)
  FROM still
 WHERE run.id = still.id
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

-- name: release
-- Claimed runs this worker never started (held ahead of its free slots for longer than it
-- should, or at shutdown) go back to the queue as if never claimed: the attempt the claim
-- counted is taken back and no attempt is recorded.
-- Fence: the UPDATE's row lock (as for complete).
WITH held AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS h(id, attempt)
), returned AS (
    UPDATE pgqueue.runs AS run
       SET status = 'queued', attempt = run.attempt - 1, worker_id = NULL, lease_expires_at = NULL,
           attempt_started_at = NULL,
           started_at = CASE WHEN run.attempt = 1 THEN NULL ELSE run.started_at END
      FROM held
     WHERE run.id = held.id AND run.attempt = held.attempt AND run.status = 'running'
       AND run.worker_id = %(worker)s
    RETURNING run.id, run.queue, run.priority, run.run_at, run.task, run.concurrency_key
), requeued AS (
    INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
    SELECT id, queue, priority, run_at, task, concurrency_key FROM returned
), woken AS (
    SELECT pg_notify('pgqueue_ready', queue) FROM (SELECT DISTINCT queue FROM returned) q
)
SELECT id FROM returned, (SELECT count(*) FROM woken) w

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
