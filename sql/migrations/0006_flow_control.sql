-- Flow control: per-key concurrency limits decided inside the claim, round-robin fairness
-- across keys, token-bucket rate limits with fleet-wide holds, and trace context at enqueue.
--
-- Claim order within a queue (documented in the README):
--   1. higher priority first;
--   2. at equal priority, runs without a concurrency key are taken oldest first (run_at, id),
--      and runs with a key round-robin across keys: each keyed run gets a per-key sequence
--      number (fair_seq) when it enters `ready`, one more than the last queued run of its key,
--      but never below the queue's current front. A key that enqueues 100,000 runs takes
--      sequence numbers 100,000 deep; a key arriving later starts at the front and is served
--      alongside it, one run per key per round;
--   3. the two kinds alternate: the k-th best unkeyed run and the k-th best keyed run rank alike.

ALTER TABLE pgqueue.ready ADD COLUMN fair_seq bigint;

-- What a run costs in rate-limit units: [{"limit": name, "key": key, "units": n}, ...]
ALTER TABLE pgqueue.runs ADD COLUMN rate_cost jsonb;

-- How plain-SQL enqueues compute a task's keys (the Python client computes them itself):
-- concurrency_key_field names the input field holding the key; rate_limits is a list of
-- {"limit": name, "key_field": field or null, "units": n, "units_field": field or null,
--  "python_only": bool}.
ALTER TABLE pgqueue.tasks
    ADD COLUMN concurrency_key_field text,
    ADD COLUMN concurrency_python_only boolean NOT NULL DEFAULT false,
    ADD COLUMN rate_limits jsonb;

-- Rows written from code are refreshed by workers at start; rows set at runtime (a tenant on
-- a bigger plan) are marked 'runtime' and never overwritten by code.
ALTER TABLE pgqueue.concurrency_limits
    ADD COLUMN source text NOT NULL DEFAULT 'code' CHECK (source IN ('code', 'runtime'));

-- rate_limits rows: key '' is the limit's definition (and the bucket of a limit without
-- keys); keyed buckets are created from it on first use. capacity is the burst.
ALTER TABLE pgqueue.rate_limits
    ADD COLUMN source text NOT NULL DEFAULT 'code' CHECK (source IN ('code', 'runtime')),
    -- runs a claim moved to later because this bucket was short or on hold (for metrics)
    ADD COLUMN deferred_total bigint NOT NULL DEFAULT 0;

-- Two claim indexes instead of one: unkeyed runs in age order, keyed runs in round-robin order.
DROP INDEX pgqueue.ready_claim;
CREATE INDEX ready_claim ON pgqueue.ready (queue, priority DESC, run_at, run_id)
    WHERE concurrency_key IS NULL;
CREATE INDEX ready_claim_fair ON pgqueue.ready (queue, priority DESC, fair_seq, run_at, run_id)
    WHERE concurrency_key IS NOT NULL;
-- the last queued run of a key (its next sequence number) and the queued runs of a key
CREATE INDEX ready_key ON pgqueue.ready (task, concurrency_key, fair_seq) WHERE concurrency_key IS NOT NULL;

-- running runs per (task, key): the count a limited claim compares with the limit
DROP INDEX pgqueue.runs_running_key;
CREATE INDEX runs_running_key ON pgqueue.runs (task, concurrency_key, id)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;

-- A keyed run entering `ready` (enqueue, retry, wake-up, rescue...) gets its place in the
-- round-robin. Rows without a key skip the trigger (its WHEN is checked without calling it).
-- Runs inserted earlier by the same statement are visible here, so a bulk enqueue numbers
-- its runs one after another.
CREATE FUNCTION pgqueue.ready_fair_seq() RETURNS trigger
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

CREATE TRIGGER ready_fair_seq BEFORE INSERT ON pgqueue.ready
    FOR EACH ROW WHEN (NEW.concurrency_key IS NOT NULL) EXECUTE FUNCTION pgqueue.ready_fair_seq();

-- The keys a plain-SQL enqueue did not pass, from what the task's workers registered.
CREATE FUNCTION pgqueue.flow_keys(task text, input jsonb, INOUT concurrency_key text, INOUT rate_cost jsonb)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    t pgqueue.tasks;
BEGIN
    SELECT * INTO t FROM pgqueue.tasks WHERE name = flow_keys.task;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF flow_keys.concurrency_key IS NULL AND (t.concurrency_key_field IS NOT NULL OR t.concurrency_python_only) THEN
        IF t.concurrency_python_only THEN
            RAISE EXCEPTION 'pgqueue: task "%" computes its concurrency key in Python', flow_keys.task
                USING ERRCODE = 'PQ002', HINT = 'Pass it: pgqueue.enqueue(..., concurrency_key => ''tenant-1'').';
        END IF;
        concurrency_key := input ->> t.concurrency_key_field;
        IF concurrency_key IS NULL THEN
            RAISE EXCEPTION 'pgqueue: the input of task "%" has no field "%" (its concurrency key)',
                flow_keys.task, t.concurrency_key_field USING ERRCODE = 'PQ002',
                HINT = 'Add the field to the input, or pass concurrency_key => ''...''.';
        END IF;
    END IF;
    IF flow_keys.rate_cost IS NULL AND t.rate_limits IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM jsonb_array_elements(t.rate_limits) s WHERE (s ->> 'python_only')::boolean) THEN
            RAISE EXCEPTION 'pgqueue: task "%" computes its rate-limit units or keys in Python', flow_keys.task
                USING ERRCODE = 'PQ002',
                HINT = 'Pass them: rate_cost => ''[{"limit": "openai", "key": "", "units": 1}]''.';
        END IF;
        SELECT jsonb_agg(jsonb_build_object(
                   'limit', s ->> 'limit',
                   'key', coalesce(input ->> (s ->> 'key_field'), ''),
                   'units', coalesce((input ->> (s ->> 'units_field'))::float8, (s ->> 'units')::float8)))
          INTO rate_cost
          FROM jsonb_array_elements(t.rate_limits) s;
    END IF;
END
$$;

-- The enqueue functions of 0002, with the flow-control keys and the trace context.
DROP FUNCTION pgqueue.enqueue(text, jsonb, text, integer, timestamptz, interval, text, text[], jsonb, interval);
DROP FUNCTION pgqueue.enqueue_one(text, jsonb, text, integer, timestamptz, interval, text, text[], jsonb, interval);
DROP FUNCTION pgqueue.enqueue_many(text, jsonb[], text, integer, timestamptz, interval, text[], text[], jsonb,
                                   interval, bigint);

CREATE FUNCTION pgqueue.enqueue_many(
    task              text,
    inputs            jsonb[],
    queue             text DEFAULT NULL,
    priority          integer DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,
    delay             interval DEFAULT NULL,
    idempotency_keys  text[] DEFAULT NULL,
    tags              text[] DEFAULT '{}',
    metadata          jsonb DEFAULT '{}',
    schedule_to_start interval DEFAULT NULL,
    parent_id         bigint DEFAULT NULL,
    concurrency_keys  text[] DEFAULT NULL,
    rate_costs        jsonb[] DEFAULT NULL,
    trace_context     jsonb DEFAULT NULL
) RETURNS TABLE (id bigint, created boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_limit    bigint := pgqueue.max_input_bytes();
    v_queue    text;
    v_priority integer;
    v_s2s      interval;
    v_run_at   timestamptz := coalesce(enqueue_many.run_at, now()) + coalesce(enqueue_many.delay, '0');
    v_bad      record;
    v_new      bigint[];
    v_root     bigint;
    v_keys     text[] := enqueue_many.concurrency_keys;
    v_costs    jsonb[] := enqueue_many.rate_costs;
    v_flow     boolean;
BEGIN
    SELECT * INTO v_queue, v_priority, v_s2s
      FROM pgqueue.enqueue_settings(enqueue_many.task, enqueue_many.queue, enqueue_many.priority,
                                    enqueue_many.schedule_to_start);
    IF idempotency_keys IS NOT NULL
       AND cardinality(idempotency_keys) <> cardinality(inputs) THEN
        RAISE EXCEPTION 'pgqueue: % idempotency keys for % inputs',
            cardinality(idempotency_keys), cardinality(inputs) USING ERRCODE = 'PQ002',
            HINT = 'Give one key per input, or none.';
    END IF;
    IF (v_keys IS NOT NULL AND cardinality(v_keys) <> cardinality(inputs))
       OR (v_costs IS NOT NULL AND cardinality(v_costs) <> cardinality(inputs)) THEN
        RAISE EXCEPTION 'pgqueue: concurrency keys or rate costs do not match the % inputs', cardinality(inputs)
            USING ERRCODE = 'PQ002', HINT = 'Give one per input, or none.';
    END IF;
    IF enqueue_many.parent_id IS NOT NULL THEN
        SELECT coalesce(r.root_id, r.id) INTO v_root FROM pgqueue.runs r WHERE r.id = enqueue_many.parent_id;
    END IF;
    -- one pass over the inputs finds the first bad one
    SELECT u.doc, u.ord - 1 AS idx INTO v_bad
      FROM unnest(inputs) WITH ORDINALITY AS u(doc, ord)
     WHERE NOT pgqueue.input_ok(u.doc, v_limit)
     LIMIT 1;
    IF FOUND THEN
        PERFORM pgqueue.reject_input(enqueue_many.task, v_bad.doc, v_bad.idx, v_limit);
    END IF;
    -- keys the caller left out come from the task's registration
    SELECT t.concurrency_key_field IS NOT NULL OR t.concurrency_python_only OR t.rate_limits IS NOT NULL
      INTO v_flow FROM pgqueue.tasks t WHERE t.name = enqueue_many.task;
    IF v_flow AND (v_keys IS NULL OR v_costs IS NULL) THEN
        SELECT array_agg(f.concurrency_key ORDER BY u.ord), array_agg(f.rate_cost ORDER BY u.ord)
          INTO v_keys, v_costs
          FROM unnest(inputs) WITH ORDINALITY AS u(doc, ord)
         CROSS JOIN LATERAL pgqueue.flow_keys(enqueue_many.task, u.doc, v_keys[u.ord], v_costs[u.ord]) f;
    END IF;

    IF idempotency_keys IS NULL THEN
        RETURN QUERY
        WITH ins AS (
            INSERT INTO pgqueue.runs (task, queue, priority, input, run_at, expires_at, tags, metadata,
                                      parent_id, root_id, concurrency_key, rate_cost, trace_context)
            SELECT enqueue_many.task, v_queue, v_priority, u.doc, v_run_at, v_run_at + v_s2s,
                   coalesce(enqueue_many.tags, '{}'), coalesce(enqueue_many.metadata, '{}'),
                   enqueue_many.parent_id, v_root, v_keys[u.ord], v_costs[u.ord], enqueue_many.trace_context
              FROM unnest(inputs) WITH ORDINALITY AS u(doc, ord)
             ORDER BY u.ord
            RETURNING id, concurrency_key
        ), rdy AS (
            INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
            SELECT ins.id, v_queue, v_priority, v_run_at, enqueue_many.task, ins.concurrency_key
              FROM ins ORDER BY ins.id
        )
        SELECT ins.id, true FROM ins ORDER BY ins.id;
    ELSE
        WITH ins AS (
            INSERT INTO pgqueue.runs (task, queue, priority, input, run_at, expires_at,
                                      idempotency_key, tags, metadata, parent_id, root_id,
                                      concurrency_key, rate_cost, trace_context)
            SELECT enqueue_many.task, v_queue, v_priority, u.doc, v_run_at, v_run_at + v_s2s,
                   u.key, coalesce(enqueue_many.tags, '{}'), coalesce(enqueue_many.metadata, '{}'),
                   enqueue_many.parent_id, v_root, v_keys[u.ord], v_costs[u.ord], enqueue_many.trace_context
              FROM unnest(inputs, idempotency_keys) WITH ORDINALITY AS u(doc, key, ord)
             ORDER BY u.ord
            ON CONFLICT (task, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id, concurrency_key
        ), rdy AS (
            INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
            SELECT ins.id, v_queue, v_priority, v_run_at, enqueue_many.task, ins.concurrency_key
              FROM ins ORDER BY ins.id
        )
        SELECT coalesce(array_agg(ins.id), '{}') INTO v_new FROM ins;

        -- A separate statement, so that runs committed by a concurrent enqueue with the
        -- same key (which ON CONFLICT waited for) are visible here. A key repeated within
        -- the batch counts as created only at its first position.
        RETURN QUERY
        SELECT r.id, r.id = ANY (v_new) AND u.ord = min(u.ord) OVER (PARTITION BY u.key)
          FROM unnest(idempotency_keys) WITH ORDINALITY AS u(key, ord)
          JOIN pgqueue.runs r ON r.task = enqueue_many.task AND r.idempotency_key = u.key
         ORDER BY u.ord;
    END IF;

    IF v_run_at <= now() THEN
        -- one wake-up per statement, never per row
        PERFORM pg_notify('pgqueue_ready', v_queue);
    END IF;
END
$$;

COMMENT ON FUNCTION pgqueue.enqueue_many IS
    'Enqueue one run of TASK per element of INPUTS; returns (id, created) in input order.';

CREATE FUNCTION pgqueue.enqueue_one(
    task              text,
    input             jsonb DEFAULT '{}',
    queue             text DEFAULT NULL,
    priority          integer DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,
    delay             interval DEFAULT NULL,
    idempotency_key   text DEFAULT NULL,
    tags              text[] DEFAULT '{}',
    metadata          jsonb DEFAULT '{}',
    schedule_to_start interval DEFAULT NULL,
    concurrency_key   text DEFAULT NULL,
    rate_cost         jsonb DEFAULT NULL,
    trace_context     jsonb DEFAULT NULL,
    OUT id            bigint,
    OUT created       boolean
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_limit    bigint := pgqueue.max_input_bytes();
    v_queue    text := enqueue_one.queue;
    v_priority integer := enqueue_one.priority;
    v_s2s      interval := enqueue_one.schedule_to_start;
    v_run_at   timestamptz := coalesce(enqueue_one.run_at, now()) + coalesce(enqueue_one.delay, '0');
    v_key      text := enqueue_one.concurrency_key;
    v_cost     jsonb := enqueue_one.rate_cost;
BEGIN
    IF v_queue IS NULL OR v_priority IS NULL OR enqueue_one.task IS NULL OR enqueue_one.task = ''
       OR v_priority NOT BETWEEN -32768 AND 32767 THEN
        SELECT * INTO v_queue, v_priority, v_s2s
          FROM pgqueue.enqueue_settings(enqueue_one.task, v_queue, v_priority, v_s2s);
    END IF;
    IF NOT pgqueue.input_ok(enqueue_one.input, v_limit) THEN
        PERFORM pgqueue.reject_input(enqueue_one.task, enqueue_one.input, 0, v_limit);
    END IF;
    -- most tasks have no flow-control rule: a look at the registration is cheaper than calling
    -- flow_keys, which would find nothing to compute (benchmarks/enqueue.py)
    IF (v_key IS NULL OR v_cost IS NULL)
       AND EXISTS (SELECT FROM pgqueue.tasks t
                    WHERE t.name = enqueue_one.task
                      AND (t.concurrency_key_field IS NOT NULL OR t.concurrency_python_only
                           OR t.rate_limits IS NOT NULL)) THEN
        SELECT * INTO v_key, v_cost FROM pgqueue.flow_keys(enqueue_one.task, enqueue_one.input, v_key, v_cost);
    END IF;
    INSERT INTO pgqueue.runs (task, queue, priority, input, run_at, expires_at, idempotency_key, tags, metadata,
                              concurrency_key, rate_cost, trace_context)
    VALUES (enqueue_one.task, v_queue, v_priority, enqueue_one.input, v_run_at, v_run_at + v_s2s,
            enqueue_one.idempotency_key, coalesce(enqueue_one.tags, '{}'), coalesce(enqueue_one.metadata, '{}'),
            v_key, v_cost, enqueue_one.trace_context)
    ON CONFLICT (task, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING runs.id INTO id;
    IF id IS NULL THEN
        -- a new statement: sees a run committed by a concurrent enqueue that ON CONFLICT waited for
        SELECT r.id INTO id FROM pgqueue.runs r
         WHERE r.task = enqueue_one.task AND r.idempotency_key = enqueue_one.idempotency_key;
        created := false;
        RETURN;
    END IF;
    created := true;
    INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
    VALUES (id, v_queue, v_priority, v_run_at, enqueue_one.task, v_key);
    IF v_run_at <= now() THEN
        PERFORM pg_notify('pgqueue_ready', v_queue);
    END IF;
END
$$;

CREATE FUNCTION pgqueue.enqueue(
    task              text,
    input             jsonb DEFAULT '{}',
    queue             text DEFAULT NULL,
    priority          integer DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,
    delay             interval DEFAULT NULL,
    idempotency_key   text DEFAULT NULL,
    tags              text[] DEFAULT '{}',
    metadata          jsonb DEFAULT '{}',
    schedule_to_start interval DEFAULT NULL,
    concurrency_key   text DEFAULT NULL,
    rate_cost         jsonb DEFAULT NULL,
    trace_context     jsonb DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    SELECT e.id FROM pgqueue.enqueue_one(task, coalesce(input, '{}'::jsonb), queue, priority, run_at, delay,
                                         idempotency_key, tags, metadata, schedule_to_start,
                                         concurrency_key, rate_cost, trace_context) AS e;
$$;

COMMENT ON FUNCTION pgqueue.enqueue IS
    'Enqueue one run of TASK; returns its id (the existing run''s id for a repeated idempotency key).';

-- The limit that applies to KEY of TASK: its own row, else the task's default row ('*').
-- A table function written as one SELECT: the planner inlines it where it is joined LATERAL.
CREATE FUNCTION pgqueue.concurrency_limit_of(task text, key text)
RETURNS TABLE (max_running integer, strategy text)
LANGUAGE sql STABLE AS $$
    SELECT l.max_running, l.strategy FROM pgqueue.concurrency_limits l
     WHERE l.name = concurrency_limit_of.task AND l.key IN (concurrency_limit_of.key, '*')
     ORDER BY l.key = '*'
     LIMIT 1
$$;

-- Change a concurrency limit at runtime (never overwritten by code). KEY '*' is the default of
-- every key of the task; a concrete key (a tenant on a bigger plan) overrides it.
CREATE FUNCTION pgqueue.set_concurrency_limit(task text, max_running integer, key text DEFAULT '*',
                                              strategy text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    IF max_running IS NULL OR max_running < 1 THEN
        RAISE EXCEPTION 'pgqueue: a concurrency limit must be at least 1 (got %)', max_running
            USING ERRCODE = 'PQ002', HINT = 'To stop a task from running, pause its queue instead.';
    END IF;
    IF strategy IS NOT NULL AND strategy NOT IN ('queue', 'cancel_newest', 'cancel_oldest') THEN
        RAISE EXCEPTION 'pgqueue: unknown concurrency strategy "%"', strategy
            USING ERRCODE = 'PQ002', HINT = 'Use queue, cancel_newest or cancel_oldest.';
    END IF;
    INSERT INTO pgqueue.concurrency_limits AS l (name, key, max_running, strategy, source)
    VALUES (task, coalesce(key, '*'), max_running,
            coalesce(strategy, (SELECT d.strategy FROM pgqueue.concurrency_limits d
                                 WHERE d.name = task AND d.key = '*'), 'queue'), 'runtime')
    ON CONFLICT ON CONSTRAINT concurrency_limits_pkey DO UPDATE
       SET max_running = excluded.max_running, strategy = coalesce(set_concurrency_limit.strategy, l.strategy),
           source = 'runtime', updated_at = now();
    -- a raised limit may make queued runs claimable now
    PERFORM pg_notify('pgqueue_ready', q.queue)
       FROM (SELECT DISTINCT r.queue FROM pgqueue.ready r WHERE r.task = set_concurrency_limit.task
              LIMIT 100) q;
END
$$;

-- Remove a key's own limit (the task's default applies again), or a task's default ('*').
CREATE FUNCTION pgqueue.delete_concurrency_limit(task text, key text DEFAULT '*') RETURNS boolean
LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM pgqueue.concurrency_limits l
                    WHERE l.name = delete_concurrency_limit.task AND l.key = delete_concurrency_limit.key
                    RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM gone)
$$;

-- Define or change a rate limit at runtime: LIMIT units per PER_S seconds, bursting to BURST
-- (default LIMIT). KEY '' changes the definition (and every key's bucket that has no own
-- setting); a concrete key gets its own setting.
CREATE FUNCTION pgqueue.set_rate_limit(name text, "limit" double precision, per_s double precision,
                                       burst double precision DEFAULT NULL, key text DEFAULT '') RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    IF "limit" IS NULL OR "limit" <= 0 OR per_s IS NULL OR per_s <= 0 OR (burst IS NOT NULL AND burst <= 0) THEN
        RAISE EXCEPTION 'pgqueue: rate limit "%" needs a positive limit, period and burst (got %, %, %)',
            name, "limit", per_s, burst USING ERRCODE = 'PQ002',
            HINT = 'e.g. pgqueue.set_rate_limit(''openai'', 500, 60) for 500 units per minute.';
    END IF;
    IF coalesce(key, '') <> '' AND NOT EXISTS (SELECT 1 FROM pgqueue.rate_limits r WHERE r.name = name AND r.key = '') THEN
        RAISE EXCEPTION 'pgqueue: no rate limit named "%"', name USING ERRCODE = 'PQ003',
            HINT = 'Define it first (app.rate_limit(...) in code, or this function with key '''').';
    END IF;
    INSERT INTO pgqueue.rate_limits AS r (name, key, capacity, refill_per_s, tokens, source)
    VALUES (name, coalesce(key, ''), coalesce(burst, "limit"), "limit" / per_s, coalesce(burst, "limit"), 'runtime')
    ON CONFLICT ON CONSTRAINT rate_limits_pkey DO UPDATE
       SET capacity = excluded.capacity, refill_per_s = excluded.refill_per_s,
           tokens = least(r.tokens, excluded.capacity), source = 'runtime';
    PERFORM pgqueue.propagate_rate_limit(name);
END
$$;

-- Keyed buckets without their own setting follow their limit's definition.
CREATE FUNCTION pgqueue.propagate_rate_limit(name text) RETURNS void
LANGUAGE sql AS $$
    UPDATE pgqueue.rate_limits k
       SET capacity = d.capacity, refill_per_s = d.refill_per_s, tokens = least(k.tokens, d.capacity)
      FROM pgqueue.rate_limits d
     WHERE d.name = propagate_rate_limit.name AND d.key = '' AND k.name = d.name AND k.key <> ''
       AND k.source = 'code' AND (k.capacity, k.refill_per_s) IS DISTINCT FROM (d.capacity, d.refill_per_s);
$$;

-- Put a rate limit's key on hold (a provider answered 429 with Retry-After): no worker of the
-- fleet starts a run that needs it before then. Returns the end of the hold.
CREATE FUNCTION pgqueue.hold_rate_limit(name text, seconds double precision, key text DEFAULT '')
RETURNS timestamptz
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_until timestamptz;
BEGIN
    IF seconds IS NULL OR seconds < 0 THEN
        RAISE EXCEPTION 'pgqueue: hold seconds must be >= 0 (got %)', seconds USING ERRCODE = 'PQ002';
    END IF;
    PERFORM pgqueue.rate_bucket(name, coalesce(key, ''));
    UPDATE pgqueue.rate_limits r
       SET held_until = greatest(r.held_until, now() + make_interval(secs => seconds))
     WHERE r.name = name AND r.key = coalesce(key, '')
    RETURNING r.held_until INTO v_until;
    IF v_until IS NULL THEN
        RAISE EXCEPTION 'pgqueue: no rate limit named "%"', name USING ERRCODE = 'PQ003',
            HINT = 'Define it first (app.rate_limit(...) in code, or pgqueue.set_rate_limit(...)).';
    END IF;
    RETURN v_until;
END
$$;

-- The bucket of KEY of limit NAME, created from the definition on first use, locked, with its
-- tokens refilled to now (database clock). No row: the limit is not defined (no limit applies).
CREATE FUNCTION pgqueue.rate_bucket(name text, key text) RETURNS pgqueue.rate_limits
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    b pgqueue.rate_limits;
BEGIN
    SELECT * INTO b FROM pgqueue.rate_limits r WHERE r.name = name AND r.key = key FOR UPDATE;
    IF NOT FOUND AND key <> '' THEN
        INSERT INTO pgqueue.rate_limits (name, key, capacity, refill_per_s, tokens, source)
        SELECT d.name, key, d.capacity, d.refill_per_s, d.capacity, 'code'
          FROM pgqueue.rate_limits d WHERE d.name = name AND d.key = ''
        ON CONFLICT ON CONSTRAINT rate_limits_pkey DO NOTHING;
        SELECT * INTO b FROM pgqueue.rate_limits r WHERE r.name = name AND r.key = key FOR UPDATE;
    END IF;
    IF b.name IS NULL THEN
        RETURN NULL;
    END IF;
    b.tokens := least(b.capacity, b.tokens + b.refill_per_s * extract(epoch FROM now() - b.refilled_at));
    b.refilled_at := now();
    RETURN b;
END
$$;

CREATE TYPE pgqueue.claim_candidate AS (
    run_id          bigint,
    priority        smallint,
    run_at          timestamptz,
    task            text,
    concurrency_key text,
    fair_seq        bigint
);

-- Keyed runs worth claiming while some keys are FULL (at their limit): up to twice WANTED
-- run ids in claim order (twice, so that claimers racing for the same runs still find some
-- their rivals did not lock). The rows of full keys are not claimable, and a full key with a
-- large backlog would make an index scan that filters them out read all of it; so the scan in
-- claim order stops after a bounded number of rows (the window's run condition, PostgreSQL
-- 15+), and if that did not find enough, one due run per key that is not full is taken from
-- a skip scan over the keys (its cost grows with the number of keys, never with the backlog).
CREATE FUNCTION pgqueue.keyed_candidates(served text[], "full" text[], wanted integer) RETURNS bigint[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_cap   integer := greatest(wanted * 20, 1000);
    v_found bigint[];
BEGIN
    v_found := ARRAY(
        SELECT s.run_id FROM unnest(served) AS q(name) CROSS JOIN LATERAL (
            SELECT w.run_id FROM (
                SELECT r.run_id, r.task, r.concurrency_key,
                       row_number() OVER (ORDER BY r.priority DESC, r.fair_seq, r.run_at, r.run_id) AS n
                  FROM pgqueue.ready r
                 WHERE r.queue = q.name AND r.concurrency_key IS NOT NULL AND r.run_at <= now()) AS w
             WHERE w.n <= v_cap AND NOT (w.task || E'\x1f' || w.concurrency_key = ANY ("full"))
             LIMIT 2 * wanted) AS s);
    -- enough, or the scan saw every due keyed run: nothing deeper to find
    IF cardinality(v_found) >= 2 * wanted OR NOT EXISTS (
        SELECT 1 FROM unnest(served) AS q(name) CROSS JOIN LATERAL (
            SELECT 1 FROM pgqueue.ready r
             WHERE r.queue = q.name AND r.concurrency_key IS NOT NULL AND r.run_at <= now()
             ORDER BY r.priority DESC, r.fair_seq, r.run_at, r.run_id
             OFFSET v_cap LIMIT 1) AS deeper) THEN
        RETURN v_found;
    END IF;
    RETURN v_found || ARRAY(
        WITH RECURSIVE keys AS (
            (SELECT r.task, r.concurrency_key FROM pgqueue.ready r
              WHERE r.concurrency_key IS NOT NULL ORDER BY r.task, r.concurrency_key LIMIT 1)
            UNION ALL
            SELECT n.task, n.concurrency_key FROM keys k CROSS JOIN LATERAL (
                SELECT r.task, r.concurrency_key FROM pgqueue.ready r
                 WHERE r.concurrency_key IS NOT NULL AND (r.task, r.concurrency_key) > (k.task, k.concurrency_key)
                 ORDER BY r.task, r.concurrency_key LIMIT 1) AS n
        ), open AS (
            SELECT k.task, k.concurrency_key FROM keys k
             WHERE NOT (k.task || E'\x1f' || k.concurrency_key = ANY ("full"))
        )
        -- the first due runs of each key that is not full, as many per key as fill the claim
        SELECT f.run_id FROM open k CROSS JOIN LATERAL (
            SELECT r.run_id, r.priority, r.fair_seq, r.run_at FROM pgqueue.ready r
             WHERE r.task = k.task AND r.concurrency_key = k.concurrency_key
               AND r.queue = ANY (served) AND r.run_at <= now()
             ORDER BY r.fair_seq
             LIMIT (SELECT greatest(1, ceil(2.0 * wanted / greatest(count(*), 1)))::integer FROM open)) AS f
         WHERE f.run_id <> ALL (v_found)
         ORDER BY f.priority DESC, f.fair_seq, f.run_at, f.run_id
         LIMIT 2 * wanted - cardinality(v_found));
END
$$;

-- Claim up to MAX_RUNS due runs of the served, unpaused QUEUES for WORKER.
--
-- Candidates are locked with SKIP LOCKED in claim order (see the top of this file). Keyed
-- candidates are decided per key under a transaction-level advisory lock: the lock is taken
-- first, and the running runs are counted by a later statement, whose snapshot therefore sees
-- every claim of that key committed before the lock was granted. A key whose lock is busy is
-- left for the next claim (never waited for). Rate-limited candidates take their units from
-- their buckets, or are moved to when the units will be there (not failed, no attempt).
CREATE FUNCTION pgqueue.claim(worker uuid, queues text[], max_runs integer, lease_s double precision)
RETURNS TABLE (id bigint, task text, input jsonb, attempt integer, failures integer, expired boolean,
               queue text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_served  text[];
    v_keyed   boolean;
    v_full    text[] := '{}';
    v_cands   pgqueue.claim_candidate[];
    v_found   bigint[];
    v_locked  text[];
    v_allowed bigint[];
    v_cancel  bigint[] := '{}';
    v_take    bigint[];
    v_rated   text[];
    k         record;
BEGIN
    SELECT coalesce(array_agg(u.name), '{}') INTO v_served FROM unnest(claim.queues) AS u(name)
     WHERE NOT EXISTS (SELECT 1 FROM pgqueue.queues p WHERE p.name = u.name AND p.paused);
    v_keyed := EXISTS (SELECT 1 FROM pgqueue.ready r WHERE r.queue = ANY (v_served) AND r.concurrency_key IS NOT NULL);
    IF v_keyed THEN
        -- keys already at their limit: not worth locking candidates of (decided again below)
        SELECT coalesce(array_agg(f.task || E'\x1f' || f.key), '{}') INTO v_full
          FROM (SELECT r.task, r.concurrency_key AS key, count(*) AS running
                  FROM pgqueue.runs r
                 WHERE r.status = 'running' AND r.concurrency_key IS NOT NULL
                 GROUP BY 1, 2) f
         CROSS JOIN LATERAL pgqueue.concurrency_limit_of(f.task, f.key) l
         WHERE l.strategy = 'queue' AND f.running >= l.max_running;
    END IF;

    IF cardinality(v_full) > 0 THEN
        -- some keys are full: find the keyed candidates without scanning past their backlogs
        v_found := pgqueue.keyed_candidates(v_served, v_full, max_runs);
    END IF;
    SELECT array_agg(c) INTO v_cands FROM (
        SELECT p.* FROM unnest(v_served) AS q(name) CROSS JOIN LATERAL (
            SELECT r.run_id, r.priority, r.run_at, r.task, r.concurrency_key, r.fair_seq
              FROM pgqueue.ready r
             WHERE r.queue = q.name AND r.concurrency_key IS NULL AND r.run_at <= now()
             ORDER BY r.priority DESC, r.run_at, r.run_id
             LIMIT max_runs
               FOR UPDATE SKIP LOCKED) AS p
        UNION ALL
        SELECT f.* FROM unnest(v_served) AS q(name) CROSS JOIN LATERAL (
            SELECT r.run_id, r.priority, r.run_at, r.task, r.concurrency_key, r.fair_seq
              FROM pgqueue.ready r
             WHERE v_keyed AND v_found IS NULL
               AND r.queue = q.name AND r.concurrency_key IS NOT NULL AND r.run_at <= now()
             ORDER BY r.priority DESC, r.fair_seq, r.run_at, r.run_id
             LIMIT max_runs
               FOR UPDATE SKIP LOCKED) AS f
        UNION ALL
        SELECT x.* FROM (
            SELECT r.run_id, r.priority, r.run_at, r.task, r.concurrency_key, r.fair_seq
              FROM pgqueue.ready r
             WHERE r.run_id = ANY (v_found) AND r.run_at <= now()
             ORDER BY r.priority DESC, r.fair_seq, r.run_at, r.run_id
             LIMIT max_runs
               FOR UPDATE SKIP LOCKED) AS x
    ) AS c;
    IF v_cands IS NULL THEN
        RETURN;
    END IF;

    v_allowed := ARRAY(SELECT c.run_id FROM unnest(v_cands) c WHERE c.concurrency_key IS NULL);
    IF EXISTS (SELECT 1 FROM unnest(v_cands) c WHERE c.concurrency_key IS NOT NULL) THEN
        -- try-locks never wait, so claimers cannot deadlock on them; a busy key is skipped
        SELECT coalesce(array_agg(d.k), '{}') INTO v_locked FROM (
            SELECT DISTINCT c.task || E'\x1f' || c.concurrency_key AS k FROM unnest(v_cands) c
             WHERE c.concurrency_key IS NOT NULL ORDER BY 1) AS d
         WHERE pg_try_advisory_xact_lock(hashtextextended('pgqueue.concurrency' || E'\x1f' || d.k, 0));

        -- a new statement, hence a snapshot taken after the locks were granted
        -- one limit lookup and one count of running runs per key (not per candidate)
        FOR k IN
            SELECT g.task, g.concurrency_key, l.max_running, l.strategy, g.queued,
                   (SELECT array_agg(r.id ORDER BY r.id) FROM pgqueue.runs r
                     WHERE r.status = 'running' AND r.task = g.task
                       AND r.concurrency_key = g.concurrency_key) AS running
              FROM (SELECT c.task, c.concurrency_key,
                           array_agg(c.run_id ORDER BY c.fair_seq, c.run_at, c.run_id) AS queued
                      FROM unnest(v_cands) c
                     WHERE c.concurrency_key IS NOT NULL
                       AND c.task || E'\x1f' || c.concurrency_key = ANY (v_locked)
                     GROUP BY 1, 2) g
              LEFT JOIN LATERAL pgqueue.concurrency_limit_of(g.task, g.concurrency_key) l ON true
        LOOP
            IF k.max_running IS NULL THEN            -- a key with no limit: fairness only
                v_allowed := v_allowed || k.queued;
            ELSIF k.strategy = 'cancel_oldest' THEN
                -- the newest max_running runs of the key (running or queued) are kept; older
                -- queued runs are cancelled and older running runs are asked to stop. Kept
                -- queued runs start once the stopping runs have freed their slots.
                DECLARE
                    v_keep bigint[] := ARRAY(
                        SELECT x FROM unnest(coalesce(k.running, '{}') || k.queued) x
                         ORDER BY x DESC LIMIT k.max_running);
                BEGIN
                    v_cancel := v_cancel || ARRAY(SELECT x FROM unnest(k.queued) x WHERE x <> ALL (v_keep));
                    UPDATE pgqueue.runs r SET cancel_requested = true
                     WHERE r.id = ANY (k.running) AND r.id <> ALL (v_keep) AND NOT r.cancel_requested;
                    v_allowed := v_allowed || ARRAY(
                        SELECT x FROM unnest(k.queued) WITH ORDINALITY AS u(x, n)
                         WHERE x = ANY (v_keep)
                         ORDER BY n
                         LIMIT greatest(k.max_running - coalesce(cardinality(k.running), 0), 0));
                END;
            ELSE
                v_allowed := v_allowed || k.queued[1:greatest(k.max_running - coalesce(cardinality(k.running), 0), 0)];
                IF k.strategy = 'cancel_newest' THEN
                    v_cancel := v_cancel || k.queued[greatest(k.max_running - coalesce(cardinality(k.running), 0), 0) + 1:];
                END IF;
            END IF;
        END LOOP;
    END IF;

    -- the final pick: priority first, then unkeyed and keyed runs alternately, each in its order
    v_take := ARRAY(
        SELECT c.run_id FROM (
            SELECT c.*, row_number() OVER (
                       PARTITION BY c.priority, c.concurrency_key IS NULL
                       ORDER BY c.fair_seq, c.run_at, c.run_id) AS turn
              FROM unnest(v_cands) c WHERE c.run_id = ANY (v_allowed)) c
         ORDER BY c.priority DESC, c.turn, c.concurrency_key IS NULL, c.run_id
         LIMIT max_runs);

    -- rate limits, for the runs of tasks that have any
    SELECT array_agg(t.name) INTO v_rated FROM pgqueue.tasks t WHERE t.rate_limits IS NOT NULL;
    IF EXISTS (SELECT 1 FROM unnest(v_cands) c WHERE c.run_id = ANY (v_take) AND c.task = ANY (v_rated)) THEN
        v_take := pgqueue.take_rate_units(v_take);
    END IF;

    IF cardinality(v_cancel) > 0 THEN
        PERFORM pgqueue.cancel_by_strategy(v_cancel);
    END IF;

    RETURN QUERY
    WITH taken AS (
        DELETE FROM pgqueue.ready r WHERE r.run_id = ANY (v_take) RETURNING r.run_id
    )
    UPDATE pgqueue.runs AS run
       SET status = 'running',
           attempt = run.attempt + 1,
           attempt_started_at = now(),
           started_at = coalesce(run.started_at, now()),
           worker_id = claim.worker,
           lease_expires_at = now() + make_interval(secs => claim.lease_s)
      FROM taken
     WHERE run.id = taken.run_id AND run.status IN ('queued', 'sleeping', 'waiting')
    RETURNING run.id, run.task, run.input, run.attempt, run.failures,
              coalesce(run.expires_at < now(), false), run.queue;
END
$$;

-- Of the runs RUN_IDS (in claim order), those whose rate-limit units could be taken now; the
-- others are moved to when their units will be there (a hold's end, or the refill time,
-- counting the units of runs deferred before them by this claim).
CREATE FUNCTION pgqueue.take_rate_units(run_ids bigint[]) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    v_taken   bigint[] := '{}';
    v_deficit jsonb := '{}';
    v_run     record;
    v_need    record;
    v_b       pgqueue.rate_limits;
    v_ok      boolean;
    v_until   timestamptz;
    v_short   double precision;
    v_blocked_names text[];
    v_blocked_keys  text[];
BEGIN
    FOR v_run IN
        SELECT r.id, r.rate_cost FROM unnest(run_ids) WITH ORDINALITY AS u(id, n)
          JOIN pgqueue.runs r ON r.id = u.id ORDER BY u.n
    LOOP
        IF v_run.rate_cost IS NULL OR jsonb_typeof(v_run.rate_cost) <> 'array' THEN
            v_taken := v_taken || v_run.id;
            CONTINUE;
        END IF;
        v_ok := true;
        v_until := now();
        v_blocked_names := '{}';
        v_blocked_keys := '{}';
        -- buckets are locked in (name, key) order, so that claimers cannot deadlock
        FOR v_need IN
            SELECT e ->> 'limit' AS name, coalesce(e ->> 'key', '') AS key,
                   coalesce((e ->> 'units')::float8, 1) AS units
              FROM jsonb_array_elements(v_run.rate_cost) e ORDER BY 1, 2
        LOOP
            v_b := pgqueue.rate_bucket(v_need.name, v_need.key);
            CONTINUE WHEN v_b.name IS NULL;          -- not defined: no limit applies
            IF v_b.held_until > now() THEN
                v_ok := false;
                v_blocked_names := v_blocked_names || v_need.name;
                v_blocked_keys := v_blocked_keys || v_need.key;
                v_until := greatest(v_until, v_b.held_until);
            ELSIF v_b.tokens < v_need.units OR v_deficit ? (v_need.name || E'\x1f' || v_need.key) THEN
                v_ok := false;
                v_blocked_names := v_blocked_names || v_need.name;
                v_blocked_keys := v_blocked_keys || v_need.key;
                -- units still missing, counting those promised to runs deferred before this one
                v_short := coalesce((v_deficit ->> (v_need.name || E'\x1f' || v_need.key))::float8 + v_need.units,
                                    v_need.units - v_b.tokens);
                v_deficit := v_deficit || jsonb_build_object(v_need.name || E'\x1f' || v_need.key, v_short);
                v_until := greatest(v_until, now() + make_interval(secs => v_short / v_b.refill_per_s));
            END IF;
        END LOOP;
        IF v_ok THEN
            UPDATE pgqueue.rate_limits b
               SET tokens = least(b.capacity, b.tokens + b.refill_per_s * extract(epoch FROM now() - b.refilled_at))
                            - n.units,
                   refilled_at = now()
              FROM (SELECT e ->> 'limit' AS name, coalesce(e ->> 'key', '') AS key,
                           sum(coalesce((e ->> 'units')::float8, 1)) AS units
                      FROM jsonb_array_elements(v_run.rate_cost) e GROUP BY 1, 2) n
             WHERE b.name = n.name AND b.key = n.key;
            v_taken := v_taken || v_run.id;
        ELSE
            UPDATE pgqueue.ready r SET run_at = v_until WHERE r.run_id = v_run.id;
            UPDATE pgqueue.runs r SET run_at = v_until WHERE r.id = v_run.id;
            UPDATE pgqueue.rate_limits b SET deferred_total = b.deferred_total + 1
              FROM unnest(v_blocked_names, v_blocked_keys) AS u(name, key)
             WHERE b.name = u.name AND b.key = u.key;
        END IF;
    END LOOP;
    RETURN v_taken;
END
$$;

-- Cancel queued runs refused by their key's strategy (cancel_newest / cancel_oldest).
CREATE FUNCTION pgqueue.cancel_by_strategy(run_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    FOREACH v_id IN ARRAY run_ids LOOP
        PERFORM pgqueue.cancel_run(v_id);
        UPDATE pgqueue.runs r
           SET error = jsonb_build_object(
                   'type', 'ConcurrencyLimit',
                   'message', format('cancelled by the concurrency strategy of key %L (%s)', r.concurrency_key,
                                     (SELECT l.strategy FROM pgqueue.concurrency_limit_of(r.task, r.concurrency_key) l)))
         WHERE r.id = v_id AND r.status = 'cancelled';
    END LOOP;
END
$$;
