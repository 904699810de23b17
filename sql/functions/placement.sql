-- Placement of runs on workers: the claim's part (see docs/placement.md).
--
-- A ready row with placement (`needs` not NULL, filled by pgqueue.ready_placement in
-- triggers.sql) says what a worker must have (`needs`: 'name=value' labels, '@version=V' for a
-- pinned run), what it prefers until `prefer_until` (`prefers`: labels, '@worker=<id>' for a
-- sticky run) and the slots it takes. A claiming worker passes its labels ('name=value', and
-- '@version=V' when it has a version); '@worker=<its id>' is added here.
--
-- Cost: placed rows have their own index, by (queue, needs, ...). The groups of equal `needs`
-- are found by a skip scan (one index probe per group: its cost grows with the number of
-- distinct label sets and pinned versions waiting, never with the backlog, the workers or the
-- labels a worker has), and a group whose needs the worker lacks is never read. Inside a group
-- the scan reads at most a window of rows in claim order: rows preferring another worker are
-- passed over, and they wait at most prefer_wait, after which any worker takes them.

-- Up to twice WANTED placed runs of the SERVED queues that a worker with LABELS may take now,
-- best first (priority, then run_at, then id). Runs taking more slots than WANTED are left.
CREATE OR REPLACE FUNCTION pgqueue.placed_candidates(served text[], labels text[], wanted integer)
RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan  -- as the claim: planning anew each call costs more than running
AS $$
BEGIN
    RETURN ARRAY(
        -- the distinct needs of each served queue, one index probe each (a skip scan)
        WITH RECURSIVE groups AS (
            SELECT q.name AS queue, f.needs FROM unnest(served) AS q(name) CROSS JOIN LATERAL (
                SELECT r.needs FROM pgqueue.ready r
                 WHERE r.queue = q.name AND r.needs IS NOT NULL ORDER BY r.needs LIMIT 1) AS f
            UNION ALL
            SELECT g.queue, n.needs FROM groups g CROSS JOIN LATERAL (
                SELECT r.needs FROM pgqueue.ready r
                 WHERE r.queue = g.queue AND r.needs IS NOT NULL AND r.needs > g.needs
                 ORDER BY r.needs LIMIT 1) AS n
        )
        SELECT w.run_id FROM groups g CROSS JOIN LATERAL (
            -- in claim order, stopping at the window's end (the row_number run condition) or
            -- once enough are found, whichever comes first
            SELECT v.run_id, v.priority, v.run_at FROM (
                SELECT r.run_id, r.priority, r.run_at, r.prefers, r.prefer_until, r.slots,
                       row_number() OVER (ORDER BY r.priority DESC, r.run_at, r.run_id) AS n
                  FROM pgqueue.ready r
                 WHERE g.needs <@ labels AND r.queue = g.queue AND r.needs = g.needs AND r.run_at <= now()) AS v
             WHERE v.n <= greatest(wanted * 20, 1000)
               AND (v.prefers IS NULL OR v.prefer_until <= now() OR v.prefers <@ labels)
               AND coalesce(v.slots, 1) <= wanted
             LIMIT 2 * wanted) AS w
         ORDER BY w.priority DESC, w.run_at, w.run_id
         LIMIT 2 * wanted);
END
$$;

-- Of RUN_IDS (in claim order, locked by this claim), those that fit in FREE slots: each takes its
-- slots in order; a run that does not fit is left for a later claim and smaller ones after it
-- may still be taken (so a worker's free slots never idle behind a large run; a task whose runs
-- take many slots can be given a higher priority or a queue of its own).
CREATE OR REPLACE FUNCTION pgqueue.fit_slots(run_ids bigint[], free integer) RETURNS bigint[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_fit  bigint[] := '{}';
    v_used integer := 0;
    v_run  record;
BEGIN
    FOR v_run IN
        SELECT u.id, coalesce(r.slots, 1) AS slots FROM unnest(run_ids) WITH ORDINALITY AS u(id, n)
          JOIN pgqueue.ready r ON r.run_id = u.id ORDER BY u.n
    LOOP
        IF v_used + v_run.slots <= free THEN
            v_fit := v_fit || v_run.id;
            v_used := v_used + v_run.slots;
        END IF;
    END LOOP;
    RETURN v_fit;
END
$$;

-- The labels a worker claims with: its own, and '@worker=<id>' (what a sticky run prefers).
CREATE OR REPLACE FUNCTION pgqueue.claim_labels(worker uuid, labels text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(labels, '{}') || ('@worker=' || worker::text);
$$;

-- Whether a live worker has LABELS (and is STICKY_TO, when given): whether a preferred run is
-- worth waiting for. SECURITY DEFINER: producers enqueue (and so fire the trigger that asks)
-- without the right to read the workers table.
CREATE OR REPLACE FUNCTION pgqueue.preferred_worker_alive(labels text[], sticky_to uuid) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (
        SELECT 1 FROM pgqueue.workers w
         WHERE w.stopped_at IS NULL AND w.heartbeat_at > now() - make_interval(secs => w.lease_s)
           AND w.labels @> preferred_worker_alive.labels
           AND (preferred_worker_alive.sticky_to IS NULL OR w.id = preferred_worker_alive.sticky_to));
$$;
