-- Acting on runs from SQL (the CLI and the Python API call these too).

-- Cancel a run. A queued run is cancelled at once and never starts; a running one is asked to
-- stop (its worker sees the request at its next heartbeat). Returns what happened:
-- 'cancelled', 'cancel_requested', or the run's final status when it had already finished.
CREATE FUNCTION pgqueue.cancel_run(run_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    SELECT status INTO v_status FROM pgqueue.runs WHERE id = run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: no run with id %', run_id USING ERRCODE = 'PQ003',
            HINT = 'List runs with `pgqueue runs list`.';
    END IF;
    IF v_status IN ('queued', 'sleeping', 'waiting') THEN
        DELETE FROM pgqueue.ready WHERE ready.run_id = cancel_run.run_id;
        DELETE FROM pgqueue.event_waits WHERE event_waits.run_id = cancel_run.run_id;
        UPDATE pgqueue.runs
           SET status = 'cancelled', finished_at = now(),
               error = jsonb_build_object('type', 'Cancelled', 'message', 'cancelled before it ran')
         WHERE id = run_id;
        PERFORM pg_notify('pgqueue_done', '');
        RETURN 'cancelled';
    ELSIF v_status = 'running' THEN
        UPDATE pgqueue.runs SET cancel_requested = true WHERE id = run_id;
        RETURN 'cancel_requested';
    END IF;
    RETURN v_status;
END
$$;

-- Run a failed, cancelled or dead run again, queued at once with a fresh retry budget. Its
-- completed steps are kept (it resumes from the step that failed) unless FROM_START, which
-- discards them. Its attempts so far stay in the history.
CREATE FUNCTION pgqueue.replay_run(run_id bigint, from_start boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_run pgqueue.runs;
BEGIN
    SELECT * INTO v_run FROM pgqueue.runs WHERE id = run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: no run with id %', run_id USING ERRCODE = 'PQ003',
            HINT = 'List runs with `pgqueue runs list`.';
    END IF;
    IF v_run.status NOT IN ('failed', 'cancelled', 'dead') THEN
        RAISE EXCEPTION 'pgqueue: run % is %, only failed, cancelled or dead runs can be retried or replayed',
            run_id, v_run.status USING ERRCODE = 'PQ004',
            HINT = 'Wait for it to finish, or cancel it first.';
    END IF;
    DELETE FROM pgqueue.steps s
     WHERE s.run_id = replay_run.run_id AND (from_start OR s.status <> 'succeeded');
    DELETE FROM pgqueue.event_waits w WHERE w.run_id = replay_run.run_id;
    UPDATE pgqueue.runs
       SET status = 'queued', run_at = now(), finished_at = NULL, failures = 0, recoveries = 0,
           cancel_requested = false, error = NULL, result = NULL
     WHERE id = run_id;
    INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
    VALUES (run_id, v_run.queue, v_run.priority, now(), v_run.task, v_run.concurrency_key);
    PERFORM pg_notify('pgqueue_ready', v_run.queue);
    RETURN 'queued';
END
$$;

-- Retry = replay from the failed step.
CREATE FUNCTION pgqueue.retry_run(run_id bigint) RETURNS text
LANGUAGE sql AS $$
    SELECT pgqueue.replay_run(run_id, false)
$$;
