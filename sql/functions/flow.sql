-- Flow-control limits: per-key concurrency limits and token-bucket rate limits, looked up and
-- changed at runtime (the code's own definitions are written by workers at start). The claim
-- (claim.sql) applies them.

-- The limit that applies to KEY of TASK: its own row, else the task's default row ('*').
-- A table function written as one SELECT: the planner inlines it where it is joined LATERAL.
CREATE OR REPLACE FUNCTION pgqueue.concurrency_limit_of(task text, key text)
RETURNS TABLE (max_running integer, strategy text)
LANGUAGE sql STABLE AS $$
    SELECT l.max_running, l.strategy FROM pgqueue.concurrency_limits l
     WHERE l.name = concurrency_limit_of.task AND l.key IN (concurrency_limit_of.key, '*')
     ORDER BY l.key = '*'
     LIMIT 1
$$;

-- Change a concurrency limit at runtime (never overwritten by code). KEY '*' is the default of
-- every key of the task; a concrete key (a tenant on a bigger plan) overrides it.
CREATE OR REPLACE FUNCTION pgqueue.set_concurrency_limit(task text, max_running integer, key text DEFAULT '*',
                                              strategy text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    PERFORM pgqueue.check_name('task', task);
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
CREATE OR REPLACE FUNCTION pgqueue.delete_concurrency_limit(task text, key text DEFAULT '*') RETURNS boolean
LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM pgqueue.concurrency_limits l
                    WHERE l.name = delete_concurrency_limit.task AND l.key = delete_concurrency_limit.key
                    RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM gone)
$$;

-- Define or change a rate limit at runtime: LIMIT units per PER_S seconds, bursting to BURST
-- (default LIMIT). KEY '' changes the definition (and every key's bucket that has no own
-- setting); a concrete key gets its own setting.
CREATE OR REPLACE FUNCTION pgqueue.set_rate_limit(name text, "limit" double precision, per_s double precision,
                                       burst double precision DEFAULT NULL, key text DEFAULT '') RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    PERFORM pgqueue.check_name('rate limit', name);
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
CREATE OR REPLACE FUNCTION pgqueue.propagate_rate_limit(name text) RETURNS void
LANGUAGE sql AS $$
    UPDATE pgqueue.rate_limits k
       SET capacity = d.capacity, refill_per_s = d.refill_per_s, tokens = least(k.tokens, d.capacity)
      FROM pgqueue.rate_limits d
     WHERE d.name = propagate_rate_limit.name AND d.key = '' AND k.name = d.name AND k.key <> ''
       AND k.source = 'code' AND (k.capacity, k.refill_per_s) IS DISTINCT FROM (d.capacity, d.refill_per_s);
$$;

-- Put a rate limit's key on hold (a provider answered 429 with Retry-After): no worker of the
-- fleet starts a run that needs it before then. Returns the end of the hold.
CREATE OR REPLACE FUNCTION pgqueue.hold_rate_limit(name text, seconds double precision, key text DEFAULT '')
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
CREATE OR REPLACE FUNCTION pgqueue.rate_bucket(name text, key text) RETURNS pgqueue.rate_limits
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
