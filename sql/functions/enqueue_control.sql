-- Enqueue control: debounce, singleton (unique while active), throttle and batch, as a task registers
-- them in pgqueue.tasks.control (pgqueue/control.py writes it). Tasks without a rule never reach
-- these functions: enqueue_one and enqueue_many call them only when the task's `control` is set,
-- and the claim only for runs of tasks with a throttle or a singleton that replaces.
--
-- Debounce and singleton are decided at enqueue, per (task, key), under a transaction-level
-- advisory lock of the key: concurrent enqueues of one key queue up on it, and each reads (in a
-- statement started after the lock was granted, hence a new snapshot) what the previous one
-- committed. The caller's transaction must be READ COMMITTED (the default), as for every enqueue.
-- Throttles are decided in the claim, under a row lock of the key's start window; a batch is
-- gathered by the claim of its first item, and run and finished by its worker (worker/batches.py).

-- The key of a rule: the value of its input field as text ('' for a rule without a field).
CREATE OR REPLACE FUNCTION pgqueue.control_key_of(task text, input jsonb, rule jsonb, what text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_key text;
BEGIN
    IF rule ->> 'key_field' IS NULL THEN
        RETURN '';
    END IF;
    v_key := CASE WHEN jsonb_typeof(input) = 'object' THEN input ->> (rule ->> 'key_field') END;
    IF v_key IS NULL THEN
        RAISE EXCEPTION 'pgqueue: the input of task "%" has no field "%" (its % key)', task, rule ->> 'key_field', what
            USING ERRCODE = 'PQ002',
            HINT = format('Add the field "%s" to the input: the task''s %s is decided per value of it.',
                          rule ->> 'key_field', what);
    END IF;
    RETURN v_key;
END
$$;

-- Decide an enqueue of a task whose CONTROL is set. Returns the keys the new run is stored with
-- and its RUN_AT (a debounced run starts `window_s` after the last enqueue of its key, at most
-- `max_wait_s` after the first), or EXISTING: the run that answers this enqueue instead of a new
-- one (the debounced run not started yet, now with this INPUT; or the active singleton run, for
-- on_conflict "skip"). For on_conflict "replace", the key's queued runs are cancelled and its
-- running run is asked to stop; the new run starts once it has (see control_claim).
CREATE OR REPLACE FUNCTION pgqueue.control_enqueue(
    task text, input jsonb, control jsonb, INOUT run_at timestamptz,
    OUT existing bigint, OUT control_key text, OUT throttle_key text)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_kind text := CASE WHEN control ? 'debounce' THEN 'debounce' WHEN control ? 'singleton' THEN 'singleton'
                        WHEN control ? 'batch' THEN 'batch' END;
    v_rule jsonb := control -> v_kind;
    v_run  record;
BEGIN
    IF control ? 'throttle' THEN
        throttle_key := pgqueue.control_key_of(task, input, control -> 'throttle', 'throttle');
    END IF;
    IF v_kind IS NULL THEN
        RETURN;
    END IF;
    control_key := pgqueue.control_key_of(task, input, v_rule, v_kind);
    -- one enqueue of the key at a time, until the transaction ends; the statements below see
    -- whatever the previous enqueue of the key committed
    PERFORM pg_advisory_xact_lock(hashtextextended('pgqueue.control' || E'\x1f' || task || E'\x1f' || control_key, 0));

    IF v_kind = 'batch' THEN
        -- the key's batch being collected (its items not due yet; due ones wait for a claim): the
        -- first item starts it, due `wait_s` later; the others share its time, and the one that
        -- fills it makes the whole batch due. (The clock, not now(): this transaction may have
        -- started before the enqueue that made a batch due, whose items' time is its now().)
        SELECT count(*) AS items, min(q.run_at) AS due INTO v_run
          FROM pgqueue.runs r JOIN pgqueue.ready q ON q.run_id = r.id
         WHERE r.task = control_enqueue.task AND r.control_key = control_enqueue.control_key
           AND r.status = 'queued' AND r.batch_id IS NULL AND q.run_at > clock_timestamp();
        IF v_run.items = 0 THEN
            run_at := run_at + make_interval(secs => (v_rule ->> 'wait_s')::float8);
        ELSIF v_run.items + 1 < (v_rule ->> 'size')::integer THEN
            run_at := greatest(run_at, v_run.due);
        ELSE
            run_at := least(run_at, now());
            UPDATE pgqueue.ready q SET run_at = control_enqueue.run_at
              FROM pgqueue.runs r
             WHERE q.run_id = r.id AND r.task = control_enqueue.task AND r.control_key = control_enqueue.control_key
               AND r.status = 'queued' AND r.batch_id IS NULL AND q.run_at > clock_timestamp();
        END IF;
        RETURN;
    END IF;

    IF v_kind = 'debounce' THEN
        -- the key's run that has not started: its row in `ready` is locked, so that a claim
        -- that took it meanwhile (and deleted the row) makes it vanish here: this enqueue then
        -- starts a new run, as one that comes after the start must
        SELECT r.id, r.created_at INTO v_run
          FROM pgqueue.runs r JOIN pgqueue.ready q ON q.run_id = r.id
         WHERE r.task = control_enqueue.task AND r.control_key = control_enqueue.control_key
           AND r.status = 'queued' AND r.attempt = 0
         ORDER BY r.id DESC
         LIMIT 1
           FOR UPDATE OF q;
        run_at := least(run_at + make_interval(secs => (v_rule ->> 'window_s')::float8),
                        coalesce(v_run.created_at, now()) + make_interval(secs => (v_rule ->> 'max_wait_s')::float8));
        IF v_run.id IS NOT NULL THEN
            existing := v_run.id;
            UPDATE pgqueue.runs r SET input = control_enqueue.input, run_at = control_enqueue.run_at
             WHERE r.id = v_run.id;
            UPDATE pgqueue.ready q SET run_at = control_enqueue.run_at WHERE q.run_id = v_run.id;
        END IF;
        RETURN;
    END IF;

    -- singleton: the key's active runs, newest first (one, unless a replaced run is still stopping)
    FOR v_run IN
        SELECT r.id, r.status FROM pgqueue.runs r
         WHERE r.task = control_enqueue.task AND r.control_key = control_enqueue.control_key
           AND r.status IN ('queued', 'running', 'sleeping', 'waiting')
         ORDER BY r.id DESC
    LOOP
        IF v_rule ->> 'on_conflict' = 'skip' THEN
            existing := v_run.id;
            RETURN;
        END IF;
        -- replace: a run that has not started is cancelled; a running one is asked to stop. Its
        -- row in `ready` is locked first, in the claim's order (ready, then runs): a claim taking
        -- it meanwhile is waited for (the run is then running, and asked to stop), never deadlocked
        PERFORM 1 FROM pgqueue.ready q WHERE q.run_id = v_run.id FOR UPDATE;
        PERFORM pgqueue.cancel_run(v_run.id);
        UPDATE pgqueue.runs r
           SET error = jsonb_build_object('type', 'Replaced', 'message',
                   format('replaced by a newer enqueue of singleton key %L', control_enqueue.control_key))
         WHERE r.id = v_run.id AND r.status = 'cancelled';
    END LOOP;
END
$$;

-- enqueue_many for a task with a control rule: one enqueue_one per input, in order, so that
-- each input is decided against those before it (five edits of one document in a bulk debounce
-- to one run). A debounced or singleton run cannot be a child (a parent waits for each child it
-- spawned, and such an enqueue may answer with a run that is not its child).
CREATE OR REPLACE FUNCTION pgqueue.control_enqueue_many(
    task text, inputs jsonb[], control jsonb, queue text, priority integer, run_at timestamptz,
    delay interval, idempotency_keys text[], tags text[], metadata jsonb, schedule_to_start interval,
    parent_id bigint, concurrency_keys text[], rate_costs jsonb[], trace_context jsonb, deadline interval)
RETURNS TABLE (id bigint, created boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    i integer;
BEGIN
    IF control_enqueue_many.parent_id IS NOT NULL AND control ?| ARRAY['debounce', 'singleton', 'batch'] THEN
        RAISE EXCEPTION 'pgqueue: task "%" is debounced, a singleton or batched: it cannot be spawned as a child run',
            control_enqueue_many.task USING ERRCODE = 'PQ002',
            HINT = 'Enqueue it on its own (task.enqueue), not with ctx.spawn or as a workflow node.';
    END IF;
    FOR i IN 1 .. coalesce(cardinality(inputs), 0) LOOP
        SELECT e.id, e.created INTO id, created
          FROM pgqueue.enqueue_one(
               control_enqueue_many.task, inputs[i], control_enqueue_many.queue, control_enqueue_many.priority,
               control_enqueue_many.run_at, control_enqueue_many.delay, idempotency_keys[i],
               control_enqueue_many.tags, control_enqueue_many.metadata, control_enqueue_many.schedule_to_start,
               concurrency_keys[i], rate_costs[i], control_enqueue_many.trace_context,
               control_enqueue_many.deadline) AS e;
        IF created AND control_enqueue_many.parent_id IS NOT NULL THEN
            -- a throttled child: the parent and tree it was spawned in
            UPDATE pgqueue.runs r
               SET parent_id = control_enqueue_many.parent_id,
                   root_id = (SELECT coalesce(p.root_id, p.id) FROM pgqueue.runs p
                               WHERE p.id = control_enqueue_many.parent_id)
             WHERE r.id = control_enqueue_many.id;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Of the runs RUN_IDS (in claim order; the claim calls this when some are of tasks with a
-- throttle, a batch or a singleton that replaces), those that start now; of the others:
-- * a singleton run whose key still has a running (replaced, stopping) run waits for it: it is
--   looked at again a second later;
-- * a throttled run starts if its key started fewer than `limit` attempts in the last
--   `period_s`; otherwise it waits until the oldest of those leaves the window. The key's row
--   in throttle_windows is locked (keys in order, so claimers cannot deadlock): a concurrent
--   claim of the key waits, then counts this claim's starts.
-- * a batch task's run leads a batch, and the batch's other items are set aside (see below).
-- Called before the rate limits take their units, so a run deferred here takes none.
CREATE OR REPLACE FUNCTION pgqueue.control_claim(run_ids bigint[]) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    v_wait_ids   bigint[];
    v_wait_until timestamptz[];
    v_key        record;
    v_id         bigint;
    v_all        timestamptz[];
    v_starts     timestamptz[];
    v_parked     bigint[] := '{}';
    v_next       integer;
    v_leader     bigint;
    v_items      bigint[];
BEGIN
    SELECT coalesce(array_agg(r.id), '{}'), coalesce(array_agg(now() + interval '1 second'), '{}')
      INTO v_wait_ids, v_wait_until
      FROM pgqueue.runs r JOIN pgqueue.tasks t ON t.name = r.task
     WHERE r.id = ANY (run_ids) AND r.control_key IS NOT NULL
       AND t.control -> 'singleton' ->> 'on_conflict' = 'replace'
       AND EXISTS (SELECT 1 FROM pgqueue.runs o
                    WHERE o.task = r.task AND o.control_key = r.control_key
                      AND o.status = 'running' AND o.id <> r.id);

    FOR v_key IN
        SELECT r.task, r.throttle_key AS key, (t.control -> 'throttle' ->> 'limit')::integer AS lim,
               make_interval(secs => (t.control -> 'throttle' ->> 'period_s')::float8) AS period,
               array_agg(r.id ORDER BY u.n) AS ids
          FROM unnest(run_ids) WITH ORDINALITY AS u(id, n)
          JOIN pgqueue.runs r ON r.id = u.id
          JOIN pgqueue.tasks t ON t.name = r.task
         WHERE r.throttle_key IS NOT NULL AND t.control ? 'throttle' AND r.id <> ALL (v_wait_ids)
         GROUP BY 1, 2, 3, 4
         ORDER BY 1, 2
    LOOP
        INSERT INTO pgqueue.throttle_windows (task, key) VALUES (v_key.task, v_key.key) ON CONFLICT DO NOTHING;
        SELECT w.starts INTO v_all FROM pgqueue.throttle_windows w
         WHERE w.task = v_key.task AND w.key = v_key.key
           FOR UPDATE;
        v_starts := ARRAY(SELECT s FROM unnest(v_all) AS s WHERE s > now() - v_key.period ORDER BY s);
        FOREACH v_id IN ARRAY v_key.ids LOOP
            IF cardinality(v_starts) < v_key.lim THEN
                v_starts := v_starts || now();
            ELSE
                v_wait_ids := v_wait_ids || v_id;
                v_wait_until := v_wait_until || (v_starts[cardinality(v_starts) - v_key.lim + 1] + v_key.period);
            END IF;
        END LOOP;
        -- only the last `limit` starts can matter to a later claim
        v_starts := v_starts[greatest(1, cardinality(v_starts) - v_key.lim + 1):];
        IF v_starts IS DISTINCT FROM v_all THEN
            UPDATE pgqueue.throttle_windows w SET starts = v_starts WHERE w.task = v_key.task AND w.key = v_key.key;
        END IF;
    END LOOP;

    -- batches: per key, the first run taken leads a batch of up to `size` items: the key's other
    -- runs taken by this claim, then its other runs waiting in `ready` (due or not: the leader's
    -- wait is over), oldest first. The other items stay queued, set aside for `park_s` seconds
    -- (their worker finishes them with the leader, or hands them back; should it die, they become
    -- claimable again then) and marked with the leader's id.
    FOR v_key IN
        SELECT r.task, r.control_key AS key, (t.control -> 'batch' ->> 'size')::integer AS size,
               make_interval(secs => (t.control -> 'batch' ->> 'park_s')::float8) AS park,
               array_agg(r.id ORDER BY u.n) AS ids
          FROM unnest(run_ids) WITH ORDINALITY AS u(id, n)
          JOIN pgqueue.runs r ON r.id = u.id
          JOIN pgqueue.tasks t ON t.name = r.task
         WHERE r.control_key IS NOT NULL AND t.control ? 'batch' AND r.id <> ALL (v_wait_ids)
         GROUP BY 1, 2, 3, 4
    LOOP
        v_next := 1;
        WHILE v_next <= cardinality(v_key.ids) LOOP
            v_leader := v_key.ids[v_next];
            v_items := coalesce(v_key.ids[v_next + 1:least(v_next + v_key.size - 1, cardinality(v_key.ids))], '{}');
            v_next := v_next + v_key.size;
            IF v_next > cardinality(v_key.ids) AND cardinality(v_items) < v_key.size - 1 THEN
                SELECT v_items || coalesce(array_agg(w.run_id ORDER BY w.run_id), '{}') INTO v_items FROM (
                    SELECT q.run_id FROM pgqueue.ready q JOIN pgqueue.runs r ON r.id = q.run_id
                     WHERE r.task = v_key.task AND r.control_key = v_key.key AND r.status = 'queued'
                       AND (r.batch_id IS NULL OR q.run_at <= now()) AND q.run_id <> ALL (v_key.ids)
                     ORDER BY q.run_id
                     LIMIT v_key.size - 1 - cardinality(v_items)
                       FOR UPDATE OF q SKIP LOCKED) AS w;
            END IF;
            v_parked := v_parked || v_items;
            UPDATE pgqueue.ready q SET run_at = now() + v_key.park WHERE q.run_id = ANY (v_items);
            UPDATE pgqueue.runs r SET batch_id = v_leader, run_at = now() + v_key.park WHERE r.id = ANY (v_items);
        END LOOP;
    END LOOP;

    IF cardinality(v_wait_ids) = 0 AND cardinality(v_parked) = 0 THEN
        RETURN run_ids;
    END IF;
    UPDATE pgqueue.ready q SET run_at = u.until
      FROM unnest(v_wait_ids, v_wait_until) AS u(id, until) WHERE q.run_id = u.id;
    UPDATE pgqueue.runs r SET run_at = u.until
      FROM unnest(v_wait_ids, v_wait_until) AS u(id, until) WHERE r.id = u.id;
    RETURN ARRAY(SELECT u.id FROM unnest(run_ids) WITH ORDINALITY AS u(id, n)
                  WHERE u.id <> ALL (v_wait_ids) AND u.id <> ALL (v_parked) ORDER BY u.n);
END
$$;

-- A task's control rules in a line, for listings (`pgqueue tasks`): NULL for a task without any.
CREATE OR REPLACE FUNCTION pgqueue.control_summary(control jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT nullif(concat_ws(', ',
        CASE WHEN control ? 'debounce' THEN format('debounce %s: window %ss%s',
            coalesce(control -> 'debounce' ->> 'key_field', '(task)'), control -> 'debounce' ->> 'window_s',
            ', max wait ' || (control -> 'debounce' ->> 'max_wait_s') || 's') END,
        CASE WHEN control ? 'singleton' THEN format('singleton %s: %s',
            coalesce(control -> 'singleton' ->> 'key_field', '(task)'), control -> 'singleton' ->> 'on_conflict') END,
        CASE WHEN control ? 'throttle' THEN format('throttle %s: %s per %ss',
            coalesce(control -> 'throttle' ->> 'key_field', '(task)'), control -> 'throttle' ->> 'limit',
            control -> 'throttle' ->> 'period_s') END,
        CASE WHEN control ? 'batch' THEN format('batch %s: %s items or %ss',
            coalesce(control -> 'batch' ->> 'key_field', '(task)'), control -> 'batch' ->> 'size',
            control -> 'batch' ->> 'wait_s') END), '');
$$;
