-- Recording outcomes: what the worker's complete statement (sql/queries/worker.sql) asks of a run.

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
