-- Child runs: a parent counts its unfinished children; the last one to finish wakes it.
--
-- Every place where a run reaches a final status (completion, dead-lettering, expiry,
-- cancellation) passes the parents of the children that finished here. Updating the parent's
-- counter takes its row lock, so concurrent completions and the parent's own decision to wait
-- serialise on that row: no wake-up is lost.

CREATE OR REPLACE FUNCTION pgqueue.finish_children(parent_ids bigint[]) RETURNS integer
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
