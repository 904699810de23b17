-- Trigger functions, and only those. `pgqueue migrate` creates the functions of this file at
-- the start of every migration's transaction (the other files only after the last migration),
-- so that a migration can attach them with CREATE TRIGGER. That early is safe: a trigger
-- function takes no arguments and returns `trigger`, so creating it needs no table, and its
-- body is not checked then (check_function_bodies = off); it runs only once a trigger calls it.

-- A keyed run entering `ready` (enqueue, retry, wake-up, rescue...) gets its place in the
-- round-robin. Rows without a key skip the trigger (its WHEN is checked without calling it).
-- Runs inserted earlier by the same statement are visible here, so a bulk enqueue numbers
-- its runs one after another.
CREATE OR REPLACE FUNCTION pgqueue.ready_fair_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_last  bigint;
    v_front bigint;
BEGIN
    SELECT r.fair_seq INTO v_last FROM pgqueue.ready r
     WHERE r.task = NEW.task AND r.concurrency_key = NEW.concurrency_key
     ORDER BY r.fair_seq DESC LIMIT 1;
    SELECT r.fair_seq INTO v_front FROM pgqueue.ready r
     WHERE r.queue = NEW.queue AND r.priority = NEW.priority AND r.concurrency_key IS NOT NULL
       AND r.needs IS NULL  -- as ready_claim_fair's condition: that index finds the front at once
     ORDER BY r.fair_seq LIMIT 1;
    NEW.fair_seq := greatest(v_last + 1, v_front, 0);
    RETURN NEW;
END
$$;

-- A run entering `ready` gets its placement (what a worker must have, what it prefers, the
-- slots it takes) from its task's row in task_placement (sql/functions/placement.sql) and from
-- the run (the worker of its last attempt, the version that started it). A task without a row
-- costs one primary-key probe and leaves the row without placement (`needs` NULL).
CREATE OR REPLACE FUNCTION pgqueue.ready_placement() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    p        pgqueue.task_placement;
    v_last   uuid;
    v_ver    text;
    v_needs  text[];
    v_plain  text[];
    v_alive  boolean;
BEGIN
    SELECT * INTO p FROM pgqueue.task_placement t WHERE t.task = NEW.task;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    IF p.sticky OR p.pin_version THEN
        SELECT r.last_worker, r.started_version INTO v_last, v_ver FROM pgqueue.runs r WHERE r.id = NEW.run_id;
    END IF;
    v_needs := p.required_labels;
    IF p.pin_version AND v_ver IS NOT NULL THEN
        v_needs := v_needs || ('@version=' || v_ver);
    END IF;
    NEW.needs := ARRAY(SELECT DISTINCT x COLLATE "C" FROM unnest(v_needs) x ORDER BY 1);
    NEW.slots := nullif(p.slots, 1);
    v_plain := p.preferred_labels;
    IF cardinality(v_plain) > 0 OR (p.sticky AND v_last IS NOT NULL) THEN
        NEW.prefers := v_plain || CASE WHEN p.sticky AND v_last IS NOT NULL
                                       THEN ARRAY['@worker=' || v_last] ELSE '{}' END;
        -- the wait only makes sense while a worker it prefers is alive: else any worker, now
        v_alive := pgqueue.preferred_worker_alive(v_plain, CASE WHEN p.sticky THEN v_last END);
        NEW.prefer_until := CASE WHEN v_alive THEN greatest(NEW.run_at, now()) + p.prefer_wait ELSE now() END;
    END IF;
    RETURN NEW;
END
$$;

-- Keyed sessions (sql/functions/sessions.sql, docs/sessions.md) -----------------------------

-- A run of a session entering `ready` (enqueue, retry, wake-up, rescue, replay...) is admitted
-- only if it holds its key: the invocation already holding it goes on; with the key idle, the
-- run takes it; otherwise the run waits in the key's inbox (arrival order) and no row is
-- inserted. Keyed runs of plain tasks pass after one primary-key lookup.
-- SECURITY DEFINER: a producer (sql/roles.sql) enqueues without any right on the session tables
-- (it could otherwise rewrite a key's state or inbox); every name in it is schema-qualified.
CREATE OR REPLACE FUNCTION pgqueue.ready_admit_session() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_active bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pgqueue.sessions s WHERE s.name = NEW.task) THEN
        RETURN NEW;
    END IF;
    INSERT INTO pgqueue.session_keys (session, key) VALUES (NEW.task, NEW.concurrency_key)
    ON CONFLICT DO NOTHING;
    SELECT k.active_run INTO v_active FROM pgqueue.session_keys k
     WHERE k.session = NEW.task AND k.key = NEW.concurrency_key FOR UPDATE;
    IF v_active = NEW.run_id THEN
        RETURN NEW;                       -- the invocation holding the key: retry, wake-up, rescue
    END IF;
    IF v_active IS NOT NULL AND NOT EXISTS (
        SELECT FROM pgqueue.runs r WHERE r.id = v_active AND r.status IN ('queued', 'running', 'sleeping', 'waiting')) THEN
        -- the holder is gone (deleted by hand): hand the key on, then decide again
        PERFORM pgqueue.session_hand_on(NEW.task, NEW.concurrency_key);
        SELECT k.active_run INTO v_active FROM pgqueue.session_keys k
         WHERE k.session = NEW.task AND k.key = NEW.concurrency_key;
        IF v_active = NEW.run_id THEN
            RETURN NEW;
        END IF;
    END IF;
    IF v_active IS NULL THEN
        UPDATE pgqueue.session_keys k
           SET active_run = NEW.run_id, base_run = NULL, invocations = k.invocations + 1, updated_at = now()
         WHERE k.session = NEW.task AND k.key = NEW.concurrency_key;
        RETURN NEW;
    END IF;
    INSERT INTO pgqueue.session_inbox (session, key, run_id) VALUES (NEW.task, NEW.concurrency_key, NEW.run_id)
    ON CONFLICT (run_id) DO NOTHING;
    RETURN NULL;
END
$$;

-- A run of a session became final: if it held its key, the key goes to the next invocation
-- in the inbox; if it was still waiting there, it leaves the inbox.
CREATE OR REPLACE FUNCTION pgqueue.session_run_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pgqueue.sessions s WHERE s.name = NEW.task) THEN
        RETURN NULL;
    END IF;
    PERFORM FROM pgqueue.session_keys k
      WHERE k.session = NEW.task AND k.key = NEW.concurrency_key AND k.active_run = NEW.id
        FOR UPDATE;
    IF FOUND THEN
        PERFORM pgqueue.session_hand_on(NEW.task, NEW.concurrency_key);
    ELSE
        DELETE FROM pgqueue.session_inbox i WHERE i.run_id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;
