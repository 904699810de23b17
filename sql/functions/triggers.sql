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
     ORDER BY r.fair_seq LIMIT 1;
    NEW.fair_seq := greatest(v_last + 1, v_front, 0);
    RETURN NEW;
END
$$;
