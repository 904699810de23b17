-- Child runs: a parent counts its unfinished children; the last one to finish wakes it.
--
-- Every place where a run reaches a final status (completion, dead-lettering, expiry,
-- cancellation) passes the parents of the children that finished here. Updating the parent's
-- counter takes its row lock, so concurrent completions and the parent's own decision to wait
-- serialise on that row: no wake-up is lost.

CREATE FUNCTION pgqueue.finish_children(parent_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_woken integer;
BEGIN
    IF parent_ids IS NULL OR cardinality(parent_ids) = 0 THEN
        RETURN 0;
    END IF;
    WITH finished AS (
        SELECT p AS parent_id, count(*) AS n FROM unnest(parent_ids) AS p WHERE p IS NOT NULL GROUP BY p
    ), counted AS (
        UPDATE pgqueue.runs AS parent
           SET children_pending = greatest(0, parent.children_pending - f.n),
               status = CASE WHEN parent.status = 'waiting'
                                  AND (parent.children_pending - f.n <= 0 OR parent.wake_on_each_child)
                             THEN 'queued' ELSE parent.status END,
               run_at = CASE WHEN parent.status = 'waiting'
                                  AND (parent.children_pending - f.n <= 0 OR parent.wake_on_each_child)
                             THEN now() ELSE parent.run_at END
          FROM finished f
         WHERE parent.id = f.parent_id
        RETURNING parent.id, parent.status, parent.children_pending, parent.queue, parent.priority,
                  parent.run_at, parent.task, parent.concurrency_key, parent.wake_on_each_child
    ), woken AS (
        INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
        SELECT id, queue, priority, run_at, task, concurrency_key FROM counted
         WHERE status = 'queued' AND (children_pending = 0 OR wake_on_each_child)
        ON CONFLICT (run_id) DO UPDATE SET run_at = least(pgqueue.ready.run_at, excluded.run_at)
        RETURNING queue
    )
    SELECT count(pg_notify('pgqueue_ready', q.queue)) INTO v_woken FROM (SELECT DISTINCT queue FROM woken) q;
    RETURN v_woken;
END
$$;

-- Cancel a run and everything it spawned: queued, sleeping and waiting parts never start,
-- running parts are asked to stop (their workers see it at the next heartbeat).
CREATE FUNCTION pgqueue.cancel_run(run_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
    v_parents bigint[];
BEGIN
    -- Lock the whole tree children first, in id order: workers finishing children lock a
    -- child, then its parent, and their batches are sorted by id, so the orders agree.
    PERFORM 1 FROM (
        WITH RECURSIVE tree AS (
            SELECT r.id, 0 AS depth FROM pgqueue.runs r WHERE r.id = cancel_run.run_id
            UNION ALL
            SELECT c.id, tree.depth + 1 FROM pgqueue.runs c JOIN tree ON c.parent_id = tree.id
        )
        SELECT r.id FROM pgqueue.runs r JOIN tree ON tree.id = r.id
         ORDER BY tree.depth DESC, r.id
           FOR UPDATE OF r
    ) AS locked;
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
