-- Recording outcomes: the function the worker's complete statement (sql/queries/worker.sql) calls.

-- Why a retry (next status 'queued') must not happen, as the error the run fails with; NULL
-- when it may. A retry is refused when it would break one of the run's bounds: too many
-- RetryLater requests in a row (the task's max_retry_later), too many interrupted attempts
-- (the worker's max_interruptions), a next attempt after the run's deadline, or a retry-later
-- past its schedule-to-start window.
CREATE OR REPLACE FUNCTION pgqueue.retry_refusal(
    next_status text, retry_later integer, retry_later_cap integer, interrupted integer,
    max_interruptions integer, delay double precision, error jsonb,
    retry_laters integer, interruptions integer, deadline_at timestamptz, expires_at timestamptz)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN next_status <> 'queued' THEN NULL
        WHEN retry_later = 1 AND retry_laters + 1 > retry_later_cap THEN jsonb_build_object(
            'type', 'RetryLaterLimit',
            'message', format('the task asked to retry later %s times in a row (RetryLater or RateLimited), '
                              'more than its limit of %s; raise it with @app.task(max_retry_later=N) if '
                              'the provider needs longer, or fail the run from the task',
                              retry_laters + 1, retry_later_cap),
            'last_request', error ->> 'message')
        WHEN interrupted = 1 AND interruptions + 1 > max_interruptions THEN jsonb_build_object(
            'type', 'InfrastructureFailure',
            'message', format('%s attempts were cut off by database failures (connection dropped or '
                              'server restarted), more than the worker''s max_interruptions of %s; '
                              'last: %s', interruptions + 1, max_interruptions, error ->> 'message'))
        WHEN deadline_at IS NOT NULL AND now() + make_interval(secs => delay) >= deadline_at THEN jsonb_build_object(
            'type', 'DeadlineExceeded',
            'message', format('the run''s deadline (%s, set by the task''s deadline=) passes before its '
                              'next attempt; raise the task''s deadline to let it retry longer. Last '
                              'attempt: %s', deadline_at, error ->> 'message'))
        WHEN retry_later = 1 AND expires_at IS NOT NULL
             AND now() + make_interval(secs => delay) > expires_at THEN jsonb_build_object(
            'type', 'Expired',
            'message', format('the run asked to retry later, after its schedule-to-start window ends '
                              '(%s); raise the task''s schedule_to_start to let it wait longer', expires_at))
    END
$$;

-- Record a batch of OUTCOMES (a JSON array, one object per run) written by WORKER. An outcome
-- is applied only while the run is still running this attempt on this worker; the rows
-- returned are the outcomes that were applied, with the status written (a retry refused by
-- pgqueue.retry_refusal comes back 'failed') and its error.
-- Fence: `checked` locks each run's row (FOR NO KEY UPDATE, the lock the UPDATE itself takes),
-- held until commit; a concurrent rescue, cancel or step fence (FOR SHARE, see durable.sql)
-- either waits for it or is waited for, and under READ COMMITTED the WHERE is re-checked on the
-- row as that other writer left it.
-- Plan: each outcome finds its run by id (LATERAL, in the order of IDS, which the completer
-- sorts), and the later parts read what they need from the UPDATE's RETURNING: the planner,
-- expecting almost no running runs, would otherwise scan every running run's index entry and
-- join each with every outcome (a cost growing with the square of the batch).
-- A function, on a generic plan: planning this statement anew at every call cost more than
-- running it (0.54 of 0.93 ms for a batch of ten), and every step of the plan above follows an
-- index whatever the batch.
CREATE OR REPLACE FUNCTION pgqueue.record_outcomes(worker uuid, outcomes jsonb, ids bigint[],
                                                   max_interruptions integer)
RETURNS TABLE (id bigint, status text, error_type text, error_message text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH outcome AS (
        -- one JSON array of outcomes: the driver sends it as one text, not a dozen arrays
        SELECT * FROM jsonb_to_recordset(record_outcomes.outcomes)
               AS o(id bigint, attempt int, status text, attempt_outcome text, result text, error jsonb,
                    delay float8, failed int, logs text, retry_later int, retry_later_cap int, interrupted int)
    ), checked AS (
        -- these columns change only through this fenced statement: the snapshot is current
        SELECT o.*, pgqueue.retry_refusal(o.status, o.retry_later, o.retry_later_cap, o.interrupted,
                                          record_outcomes.max_interruptions, o.delay, o.error, r.retry_laters,
                                          r.interruptions, r.deadline_at, r.expires_at) AS stop
          FROM outcome o CROSS JOIN LATERAL (
              SELECT r.retry_laters, r.interruptions, r.deadline_at, r.expires_at FROM pgqueue.runs r
               WHERE r.id = o.id AND r.attempt = o.attempt AND r.status = 'running'
                 AND r.worker_id = record_outcomes.worker
                 FOR NO KEY UPDATE) AS r
    ), applied AS (
        UPDATE pgqueue.runs AS run
           SET status = CASE WHEN o.stop IS NULL THEN o.status ELSE 'failed' END,
               result = o.result::jsonb,
               error = coalesce(o.stop, o.error,
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
         -- (the ids again: they tell the planner how few rows to expect)
         WHERE run.id = o.id AND run.id = ANY (record_outcomes.ids)
        RETURNING run.id, run.status, run.queue, run.priority, run.run_at, run.task, run.concurrency_key,
                  run.attempt, run.attempt_started_at, run.parent_id, run.error AS written_error,
                  o.stop, o.attempt_outcome, o.error, o.logs
    ), requeued AS (
        INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
        SELECT id, queue, priority, run_at, task, concurrency_key FROM applied WHERE status = 'queued'
        RETURNING queue, run_at
    ), recorded AS (
        INSERT INTO pgqueue.attempts (run_id, attempt, worker_id, started_at, finished_at, outcome,
                                      error_type, error_message, traceback, logs)
        SELECT a.id, a.attempt, record_outcomes.worker, coalesce(a.attempt_started_at, now()), now(),
               CASE WHEN a.stop IS NULL THEN a.attempt_outcome
                    WHEN a.attempt_outcome = 'interrupted' THEN 'interrupted' ELSE 'failed' END,
               coalesce(a.stop, a.error) ->> 'type', coalesce(a.stop, a.error) ->> 'message',
               a.error ->> 'traceback', a.logs
          FROM applied a
        ON CONFLICT (run_id, attempt) DO NOTHING
    ), woken AS (
        SELECT pg_notify('pgqueue_ready', queue) FROM (SELECT DISTINCT queue FROM requeued WHERE run_at <= now()) q
    ), done AS (
        SELECT pg_notify('pgqueue_done', '') WHERE EXISTS (SELECT 1 FROM applied WHERE status <> 'queued')
    ), parents AS (
        SELECT pgqueue.finish_children(array_agg(parent_id)) FROM applied
         WHERE parent_id IS NOT NULL AND status IN ('succeeded', 'failed', 'cancelled', 'dead')
    )
    -- (the side effects' CTEs are read once, as conditions that always hold)
    SELECT id, status, written_error ->> 'type' AS error_type, written_error ->> 'message' AS error_message
      FROM applied
     WHERE (SELECT count(*) FROM woken) >= 0 AND (SELECT count(*) FROM done) >= 0
       AND (SELECT count(*) FROM parents) >= 0;
END
$$;
