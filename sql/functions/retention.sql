-- Retention: how long finished runs and unconsumed events are kept, and pruning them.
--
-- A run is pruned with its whole tree: a root run (parent_id IS NULL) and every run below it
-- (root_id = the root's id, at any depth), with their attempts (and the task logs kept in them),
-- steps, event waits, ready entries, streamed output and progress, and the cron ticks that
-- started them. A tree is pruned only
-- when the root and every run in it are final and older than their own policy: a finished child
-- of a running workflow is kept (its result is still needed), an unfinished run never goes.
--
-- Locking: pruning locks only final runs, with FOR UPDATE SKIP LOCKED. Claims, completions and
-- heartbeats touch unfinished runs only, so they never wait for a pruner nor a pruner for them;
-- a tree someone holds (a cancel, another pruner) is skipped and taken at a later call. Each
-- call is one bounded batch in the caller's transaction: call it again (the worker's pruner, the
-- CLI and `CALL pgqueue.prune_all()` do) until it returns zero runs.

-- The policy of a run of TASK that finished as STATUS: the task's own row, else the default
-- ('*'). NULL for a status that is not final: such runs are never pruned.
CREATE OR REPLACE FUNCTION pgqueue.retention_of(task text, status text) RETURNS interval
LANGUAGE sql STABLE AS $$
    SELECT p.keep FROM pgqueue.retention_policies p
     WHERE p.task IN (retention_of.task, '*') AND p.status = retention_of.status
       AND retention_of.status <> 'events'
     ORDER BY p.task = '*'
     LIMIT 1
$$;

-- Whether a run (TASK, STATUS, FINISHED_AT) is past its retention (false for unfinished runs).
CREATE OR REPLACE FUNCTION pgqueue.run_expired(task text, status text, finished_at timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(run_expired.finished_at < now() - pgqueue.retention_of(run_expired.task, run_expired.status),
                    false)
$$;

-- Set how long finished runs are kept, at runtime (never overwritten by code). STATUS: one of
-- succeeded, failed, cancelled, dead, or NULL for all four; 'events' sets how long an event no
-- run waits for is kept. TASK: NULL for every task's default, or a task's own policy. Returns
-- the number of policies set.
CREATE OR REPLACE FUNCTION pgqueue.set_retention(keep interval, status text DEFAULT NULL, task text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task text := coalesce(task, '*');
    v_statuses text[];
    v_count integer;
BEGIN
    IF keep IS NULL OR keep <= interval '0' THEN
        RAISE EXCEPTION 'pgqueue: a retention must be a positive age (got %)', coalesce(keep::text, 'NULL')
            USING ERRCODE = 'PQ002', HINT = 'e.g. SELECT pgqueue.set_retention(''7 days'', ''succeeded'')';
    END IF;
    IF status IS NULL THEN
        v_statuses := ARRAY['succeeded', 'failed', 'cancelled', 'dead'];
    ELSIF status IN ('succeeded', 'failed', 'cancelled', 'dead', 'events') THEN
        v_statuses := ARRAY[status];
    ELSE
        RAISE EXCEPTION 'pgqueue: unknown retention status "%"', status USING ERRCODE = 'PQ002',
            HINT = 'Use succeeded, failed, cancelled, dead, events, or NULL for the four final statuses.';
    END IF;
    IF status = 'events' AND v_task <> '*' THEN
        RAISE EXCEPTION 'pgqueue: events are kept for one age for all tasks (got task "%")', v_task
            USING ERRCODE = 'PQ002', HINT = 'Leave the task out: SELECT pgqueue.set_retention(''1 day'', ''events'')';
    END IF;
    IF v_task <> '*' AND NOT EXISTS (SELECT 1 FROM pgqueue.tasks t WHERE t.name = v_task) THEN
        RAISE EXCEPTION 'pgqueue: no task named "%"', v_task USING ERRCODE = 'PQ003',
            HINT = 'Tasks are known once a worker of their app has started; see `pgqueue status`.';
    END IF;
    INSERT INTO pgqueue.retention_policies AS p (task, status, keep, source)
    SELECT v_task, s, keep, 'runtime' FROM unnest(v_statuses) AS s
    ON CONFLICT ON CONSTRAINT retention_policies_pkey DO UPDATE
       SET keep = excluded.keep, source = 'runtime', updated_at = now();
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Remove a task's own policies (STATUS NULL: all of them); its runs follow the defaults again,
-- and code may set them again. Returns the number removed.
CREATE OR REPLACE FUNCTION pgqueue.unset_retention(task text, status text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_count integer;
BEGIN
    IF task IS NULL OR task = '*' THEN
        RAISE EXCEPTION 'pgqueue: the default policies cannot be removed, only changed' USING ERRCODE = 'PQ002',
            HINT = 'e.g. SELECT pgqueue.set_retention(''30 days'', ''succeeded'')';
    END IF;
    DELETE FROM pgqueue.retention_policies p WHERE p.task = task AND (status IS NULL OR p.status = status);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Prune one batch: whole trees, oldest first, up to BATCH_SIZE runs in all, and up to
-- BATCH_SIZE events, then return what was removed. A tree larger than the batch is removed over
-- several calls, BATCH_SIZE runs below its root at a time, its root last.
-- DRY_RUN: remove nothing, count everything prunable now.
CREATE OR REPLACE FUNCTION pgqueue.prune(batch_size integer DEFAULT 1000, dry_run boolean DEFAULT false)
RETURNS TABLE (trees bigint, runs bigint, attempts bigint, steps bigint, event_waits bigint,
               cron_ticks bigint, events bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    -- no run finished after this can be due (the shortest policy): bounds the index scan
    v_cutoff     timestamptz;
    -- the same for the default policies only (task '*')
    v_default_cutoff timestamptz;
    v_task       text;
    v_keep       interval;
    v_event_keep interval;
    v_due        refcursor;
    v_root       bigint;
    v_size       bigint;
    v_budget     bigint := batch_size;
    v_roots      bigint[] := '{}';
    v_below      bigint[];
    v_ids        bigint[];
    v_trees      bigint;
    v_attempts   bigint;
    v_steps      bigint;
    v_waits      bigint;
    v_ticks      bigint;
    v_events     bigint := 0;
    v_n          bigint;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'pgqueue: prune batch size must be at least 1 (got %)', batch_size
            USING ERRCODE = 'PQ002', HINT = 'e.g. SELECT * FROM pgqueue.prune(1000)';
    END IF;
    SELECT now() - min(p.keep), now() - min(p.keep) FILTER (WHERE p.task = '*')
      INTO v_cutoff, v_default_cutoff
      FROM pgqueue.retention_policies p WHERE p.status <> 'events';
    SELECT p.keep INTO v_event_keep FROM pgqueue.retention_policies p WHERE p.task = '*' AND p.status = 'events';

    IF dry_run THEN
        RETURN QUERY
        WITH roots AS (
            SELECT r.id FROM pgqueue.runs r
             WHERE r.parent_id IS NULL AND r.finished_at < v_cutoff
               AND pgqueue.run_expired(r.task, r.status, r.finished_at)
               AND NOT EXISTS (SELECT 1 FROM pgqueue.runs d
                                WHERE d.root_id = r.id AND NOT pgqueue.run_expired(d.task, d.status, d.finished_at))
        ), tree AS (
            SELECT id FROM roots UNION ALL SELECT d.id FROM pgqueue.runs d JOIN roots ON d.root_id = roots.id
        )
        SELECT (SELECT count(*) FROM roots), (SELECT count(*) FROM tree),
               (SELECT count(*) FROM pgqueue.attempts a JOIN tree ON a.run_id = tree.id),
               (SELECT count(*) FROM pgqueue.steps s JOIN tree ON s.run_id = tree.id),
               (SELECT count(*) FROM pgqueue.event_waits w JOIN tree ON w.run_id = tree.id),
               (SELECT count(*) FROM pgqueue.cron_ticks t JOIN tree ON t.run_id = tree.id),
               (SELECT count(*) FROM pgqueue.events e
                 WHERE e.created_at < now() - v_event_keep
                   AND NOT EXISTS (SELECT 1 FROM pgqueue.event_waits w
                                    WHERE w.event_name = e.name AND w.event_key = e.key));
        RETURN;
    END IF;

    -- Roots that are due and whose whole tree is due, oldest first, until the trees fill the
    -- batch. A cursor locks each row as it is fetched (one at a time: FETCH, not a FOR loop, which
    -- reads ahead), so a pruner locks only the roots it takes; a root another transaction holds
    -- is skipped, as is a tree with a run still unfinished or not yet due.
    -- First every task's runs older than the shortest default policy, in finishing order (the
    -- scan stops at that age: it never walks the recent history) ...
    OPEN v_due FOR
        SELECT r.id, (SELECT count(*) FROM pgqueue.runs d WHERE d.root_id = r.id) AS below
          FROM pgqueue.runs r
         WHERE r.parent_id IS NULL AND r.finished_at < v_default_cutoff
           AND pgqueue.run_expired(r.task, r.status, r.finished_at)
           AND NOT EXISTS (SELECT 1 FROM pgqueue.runs d
                            WHERE d.root_id = r.id AND NOT pgqueue.run_expired(d.task, d.status, d.finished_at))
         ORDER BY r.finished_at
           FOR UPDATE OF r SKIP LOCKED;
    LOOP
        FETCH v_due INTO v_root, v_size;
        EXIT WHEN NOT FOUND;
        v_roots := v_roots || v_root;
        v_budget := v_budget - 1 - v_size;
        EXIT WHEN v_budget <= 0;
    END LOOP;
    CLOSE v_due;
    -- ... then the runs of each task whose own policy is shorter, oldest first (runs_task_id).
    FOR v_task, v_keep IN
        SELECT p.task, min(p.keep) FROM pgqueue.retention_policies p
         WHERE p.task <> '*' AND p.status <> 'events'
         GROUP BY p.task HAVING now() - min(p.keep) > v_default_cutoff
    LOOP
        EXIT WHEN v_budget <= 0;
        OPEN v_due FOR
            SELECT r.id, (SELECT count(*) FROM pgqueue.runs d WHERE d.root_id = r.id) AS below
              FROM pgqueue.runs r
             WHERE r.task = v_task AND r.parent_id IS NULL AND r.finished_at < now() - v_keep
               AND r.id <> ALL(v_roots)
               AND pgqueue.run_expired(r.task, r.status, r.finished_at)
               AND NOT EXISTS (SELECT 1 FROM pgqueue.runs d
                                WHERE d.root_id = r.id AND NOT pgqueue.run_expired(d.task, d.status, d.finished_at))
             ORDER BY r.task, r.id
               FOR UPDATE OF r SKIP LOCKED;
        LOOP
            FETCH v_due INTO v_root, v_size;
            EXIT WHEN NOT FOUND;
            v_roots := v_roots || v_root;
            v_budget := v_budget - 1 - v_size;
            EXIT WHEN v_budget <= 0;
        END LOOP;
        CLOSE v_due;
    END LOOP;

    -- The runs below those roots, at most a batch of them; a run held elsewhere is skipped, and
    -- keeps its root (below) until a later call. The condition is checked again on the row it
    -- locks: a run retried meanwhile is no longer final and stays, with its root.
    WITH gone AS (
        DELETE FROM pgqueue.runs d
         WHERE d.id IN (SELECT b.id FROM pgqueue.runs b
                         WHERE b.root_id = ANY(v_roots)
                           AND pgqueue.run_expired(b.task, b.status, b.finished_at)
                         ORDER BY b.id
                         LIMIT batch_size
                           FOR UPDATE SKIP LOCKED)
        RETURNING d.id
    )
    SELECT coalesce(array_agg(id), '{}') INTO v_below FROM gone;

    -- Roots with nothing left below them.
    WITH gone AS (
        DELETE FROM pgqueue.runs r
         WHERE r.id = ANY(v_roots) AND NOT EXISTS (SELECT 1 FROM pgqueue.runs d WHERE d.root_id = r.id)
        RETURNING r.id
    )
    SELECT coalesce(array_agg(id), '{}') INTO v_roots FROM gone;
    v_trees := cardinality(v_roots);
    v_ids := v_below || v_roots;

    DELETE FROM pgqueue.attempts a WHERE a.run_id = ANY(v_ids);
    GET DIAGNOSTICS v_attempts = ROW_COUNT;
    DELETE FROM pgqueue.steps s WHERE s.run_id = ANY(v_ids);
    GET DIAGNOSTICS v_steps = ROW_COUNT;
    DELETE FROM pgqueue.event_waits w WHERE w.run_id = ANY(v_ids);
    GET DIAGNOSTICS v_waits = ROW_COUNT;
    DELETE FROM pgqueue.cron_ticks t WHERE t.run_id = ANY(v_ids);
    GET DIAGNOSTICS v_ticks = ROW_COUNT;
    -- streamed output and progress (not counted in the result: one row per chunk)
    DELETE FROM pgqueue.stream_chunks c WHERE c.run_id = ANY(v_ids);
    DELETE FROM pgqueue.streams s WHERE s.run_id = ANY(v_ids);
    -- messages, waits in a receive, published states (not counted either)
    DELETE FROM pgqueue.messages m WHERE m.run_id = ANY(v_ids);
    DELETE FROM pgqueue.message_waits w WHERE w.run_id = ANY(v_ids);
    DELETE FROM pgqueue.run_states s WHERE s.run_id = ANY(v_ids);
    -- reported usage (not counted either; usage_totals keeps the all-time sums)
    DELETE FROM pgqueue.usage u WHERE u.run_id = ANY(v_ids);
    -- a final run has no entry in `ready`; one left by a bug would point at nothing
    DELETE FROM pgqueue.ready q WHERE q.run_id = ANY(v_ids);

    -- Events no run waits for, older than their age. (A run reaching a wait later accepts the
    -- latest event sent since it was created: events older than this age are no longer seen.)
    IF v_event_keep IS NOT NULL THEN
        WITH gone AS (
            DELETE FROM pgqueue.events e
             WHERE e.id IN (SELECT o.id FROM pgqueue.events o
                             WHERE o.created_at < now() - v_event_keep
                               AND NOT EXISTS (SELECT 1 FROM pgqueue.event_waits w
                                                WHERE w.event_name = o.name AND w.event_key = o.key)
                             ORDER BY o.created_at
                             LIMIT batch_size
                               FOR UPDATE SKIP LOCKED)
            RETURNING 1
        )
        SELECT count(*) INTO v_events FROM gone;
    END IF;

    v_n := cardinality(v_ids);
    -- a statistics row of this call's own: concurrent pruners take different slots
    UPDATE pgqueue.prune_stats s
       SET last_called_at = now(),
           last_pruned_at = CASE WHEN v_n + v_events > 0 THEN now() ELSE s.last_pruned_at END,
           last_trees = CASE WHEN v_n + v_events > 0 THEN v_trees ELSE s.last_trees END,
           last_runs = CASE WHEN v_n + v_events > 0 THEN v_n ELSE s.last_runs END,
           last_events = CASE WHEN v_n + v_events > 0 THEN v_events ELSE s.last_events END,
           total_trees = s.total_trees + v_trees, total_runs = s.total_runs + v_n,
           total_events = s.total_events + v_events,
           max_pruned_id = greatest(s.max_pruned_id, (SELECT max(i) FROM unnest(v_ids) AS i))
     WHERE s.slot = coalesce((SELECT f.slot FROM pgqueue.prune_stats f ORDER BY f.slot LIMIT 1 FOR UPDATE SKIP LOCKED),
                             -- every slot busy: queue on the first rather than lose the counts
                             0);

    RETURN QUERY SELECT v_trees, v_n, v_attempts, v_steps, v_waits, v_ticks, v_events;
END
$$;

-- Prune everything due, one batch per transaction (a procedure commits between batches): for
-- cron jobs and psql, `CALL pgqueue.prune_all()`. Outside a transaction block only.
CREATE OR REPLACE PROCEDURE pgqueue.prune_all(batch_size integer DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE
    v_runs bigint;
    v_events bigint;
BEGIN
    LOOP
        SELECT p.runs, p.events INTO v_runs, v_events FROM pgqueue.prune(batch_size) p;
        COMMIT;
        EXIT WHEN v_runs = 0 AND v_events = 0;
    END LOOP;
END
$$;
