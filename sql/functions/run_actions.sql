-- Acting on runs and queues from SQL (the CLI and the Python API call these too).

-- Run a failed, cancelled or dead run again, queued at once with a fresh retry budget. Its
-- completed steps are kept (it resumes from the step that failed) unless FROM_START, which
-- discards them. Its attempts so far stay in the history.
CREATE OR REPLACE FUNCTION pgqueue.replay_run(run_id bigint, from_start boolean DEFAULT false) RETURNS text
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
    DELETE FROM pgqueue.message_waits w WHERE w.run_id = replay_run.run_id;
    UPDATE pgqueue.runs
       SET status = 'queued', run_at = now(), finished_at = NULL, failures = 0, recoveries = 0,
           retry_laters = 0, interruptions = 0, cancel_requested = false, error = NULL, result = NULL,
           -- a fresh deadline too (a run that failed for its deadline would fail again at once)
           deadline_at = now() + (SELECT t.deadline FROM pgqueue.tasks t WHERE t.name = v_run.task)
     WHERE id = run_id;
    INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
    VALUES (run_id, v_run.queue, v_run.priority, now(), v_run.task, v_run.concurrency_key);
    -- a replayed child counts as unfinished again for its parent
    UPDATE pgqueue.runs SET children_pending = children_pending + 1 WHERE id = v_run.parent_id;
    PERFORM pg_notify('pgqueue_ready', v_run.queue);
    RETURN 'queued';
END
$$;

-- Retry = replay from the failed step.
CREATE OR REPLACE FUNCTION pgqueue.retry_run(run_id bigint) RETURNS text
LANGUAGE sql AS $$
    SELECT pgqueue.replay_run(run_id, false)
$$;

-- Move a run that has not started yet to another time.
CREATE OR REPLACE FUNCTION pgqueue.reschedule_run(run_id bigint, run_at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_status text;
BEGIN
    SELECT status INTO v_status FROM pgqueue.runs WHERE id = reschedule_run.run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: no run with id %', reschedule_run.run_id USING ERRCODE = 'PQ003',
            HINT = 'List runs with `pgqueue runs list`.';
    END IF;
    IF v_status <> 'queued' THEN
        RAISE EXCEPTION 'pgqueue: run % is %, only queued runs can be rescheduled', reschedule_run.run_id, v_status
            USING ERRCODE = 'PQ004', HINT = 'Cancel or retry it instead.';
    END IF;
    UPDATE pgqueue.runs SET run_at = reschedule_run.run_at WHERE id = reschedule_run.run_id;
    UPDATE pgqueue.ready SET run_at = reschedule_run.run_at WHERE ready.run_id = reschedule_run.run_id;
    RETURN 'queued';
END
$$;

-- Cancel a run and everything it spawned: queued, sleeping and waiting parts never start,
-- running parts are asked to stop (their workers see it at the next heartbeat).
CREATE OR REPLACE FUNCTION pgqueue.cancel_run(run_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
    v_parents bigint[];
    v_tree   bigint[];
    v_depths integer[];
BEGIN
    WITH RECURSIVE tree AS (
        SELECT r.id, 0 AS depth FROM pgqueue.runs r WHERE r.id = cancel_run.run_id
        UNION ALL
        SELECT c.id, tree.depth + 1 FROM pgqueue.runs c JOIN tree ON c.parent_id = tree.id
    )
    SELECT array_agg(tree.id), array_agg(tree.depth) INTO v_tree, v_depths FROM tree;
    -- The tree's ready rows first, as a claim takes them (a ready row, then its run's row): a
    -- cancel that held a run's row while waiting for its ready row could deadlock with a claim.
    PERFORM 1 FROM pgqueue.ready q WHERE q.run_id = ANY (v_tree) ORDER BY q.run_id FOR UPDATE;
    -- Then the runs, children first, in id order: workers finishing children lock a child,
    -- then its parent, and their batches are sorted by id, so the orders agree.
    PERFORM 1 FROM pgqueue.runs r JOIN unnest(v_tree, v_depths) AS t(id, depth) ON t.id = r.id
     ORDER BY t.depth DESC, r.id
       FOR UPDATE OF r;
    SELECT status INTO v_status FROM pgqueue.runs WHERE id = run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: no run with id %', run_id USING ERRCODE = 'PQ003',
            HINT = 'List runs with `pgqueue runs list`.';
    END IF;
    WITH RECURSIVE tree AS (
        SELECT r.id FROM pgqueue.runs r WHERE r.id = cancel_run.run_id
        UNION ALL
        SELECT c.id FROM pgqueue.runs c JOIN tree ON c.parent_id = tree.id
    ), stopped AS (
        UPDATE pgqueue.runs r
           SET status = 'cancelled', finished_at = now(),
               error = jsonb_build_object('type', 'Cancelled', 'message', 'cancelled before it ran')
          FROM tree
         WHERE r.id = tree.id AND r.status IN ('queued', 'sleeping', 'waiting')
        RETURNING r.id, r.parent_id
    ), unready AS (
        DELETE FROM pgqueue.ready USING stopped WHERE ready.run_id = stopped.id
    ), unwait AS (
        DELETE FROM pgqueue.event_waits USING stopped WHERE event_waits.run_id = stopped.id
    ), unwait_messages AS (
        DELETE FROM pgqueue.message_waits USING stopped WHERE message_waits.run_id = stopped.id
    ), asked AS (
        UPDATE pgqueue.runs r SET cancel_requested = true
          FROM tree WHERE r.id = tree.id AND r.status = 'running'
    )
    SELECT array_agg(parent_id) FILTER (WHERE parent_id IS NOT NULL AND id = cancel_run.run_id)
      INTO v_parents FROM stopped;
    PERFORM pgqueue.finish_children(v_parents);
    PERFORM pg_notify('pgqueue_done', '');
    IF v_status IN ('queued', 'sleeping', 'waiting') THEN
        RETURN 'cancelled';
    ELSIF v_status = 'running' THEN
        RETURN 'cancel_requested';
    END IF;
    RETURN v_status;
END
$$;

-- Pause a queue: its runs stay queued and no worker claims them until it is resumed.
CREATE OR REPLACE FUNCTION pgqueue.pause_queue(queue text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO pgqueue.queues (name, paused) VALUES (pgqueue.check_name('queue', queue), true)
    ON CONFLICT (name) DO UPDATE SET paused = true, updated_at = now();
$$;

CREATE OR REPLACE FUNCTION pgqueue.resume_queue(queue text) RETURNS void
LANGUAGE sql AS $$
    UPDATE pgqueue.queues SET paused = false, updated_at = now() WHERE name = queue;
    SELECT pg_notify('pgqueue_ready', pgqueue.check_name('queue', queue));
$$;
