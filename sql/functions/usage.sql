-- Usage accounting: what runs report they actually used (ctx.report_usage: LLM tokens, cost,
-- any unit), and its reconciliation with the rate-limit buckets that charged the run an
-- estimate when it was claimed (take_rate_units in claim.sql).
--
-- Reconciliation. A limit whose definition names a usage unit (app.rate_limit(...,
-- usage="tokens"), or pgqueue.set_rate_limit_usage) counts what runs report in that unit: the
-- first report of the unit in an attempt gives the bucket back the estimate the attempt's claim
-- took, and every report takes what it names. After an attempt's reports, the bucket has been
-- charged exactly the usage reported (never above its burst: a refund into a full bucket is
-- lost, as refill would be). An attempt that reports nothing of the unit (it crashed, or replayed
-- its steps without calling the provider) keeps the estimate charged: the safe side. Usage is
-- recorded whether or not the attempt still holds the run: the tokens were spent either way.

-- Refuse usage that is not an object of unit names (the name rule) to numbers >= 0.
CREATE OR REPLACE FUNCTION pgqueue.check_usage(units jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    e record;
BEGIN
    IF units IS NULL OR jsonb_typeof(units) <> 'object' OR units = '{}'::jsonb THEN
        RAISE EXCEPTION 'pgqueue: usage must name at least one unit and its amount, not %',
            left(coalesce(units::text, 'NULL'), 80) USING ERRCODE = 'PQ002',
            HINT = 'e.g. pgqueue.report_usage(run_id, attempt, ''{"tokens": 1200, "cost": 0.004}'').';
    END IF;
    FOR e IN SELECT key, value FROM jsonb_each(units) LOOP
        PERFORM pgqueue.check_name('usage unit', e.key);
        IF jsonb_typeof(e.value) <> 'number' OR (e.value::text)::float8 < 0 THEN
            RAISE EXCEPTION 'pgqueue: usage "%" must be a number >= 0, not %', e.key, left(e.value::text, 80)
                USING ERRCODE = 'PQ002', HINT = 'Report what was used: a count of tokens, a cost.';
        END IF;
    END LOOP;
END
$$;

-- Record what attempt ATTEMPT of run RUN_ID used (UNITS: {"tokens": 1200, "cost": 0.004}), by
-- STEP_KEY when a step reported it, and reconcile the buckets of the limits that count one of
-- these units (see the top of this file).
CREATE OR REPLACE FUNCTION pgqueue.report_usage(run_id bigint, attempt integer, units jsonb,
                                                step_key text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_run    record;
    v_charge record;
BEGIN
    PERFORM pgqueue.check_usage(units);
    SELECT r.task, r.concurrency_key, r.rate_cost INTO v_run FROM pgqueue.runs r WHERE r.id = run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: no run with id %', run_id USING ERRCODE = 'PQ003';
    END IF;
    IF v_run.rate_cost IS NOT NULL AND jsonb_typeof(v_run.rate_cost) = 'array' THEN
        -- reports of one run one at a time: the estimate is given back once per attempt and unit
        -- (never the run's row lock: a step_in_transaction of the run may hold a share lock on it)
        PERFORM pg_advisory_xact_lock(hashtextextended('pgqueue.usage' || E'\x1f' || run_id::text, 0));
        FOR v_charge IN
            SELECT c.name, c.key, c.estimate, (units ->> d.usage_unit)::float8 AS used,
                   NOT EXISTS (SELECT 1 FROM pgqueue.usage u
                                WHERE u.run_id = report_usage.run_id AND u.attempt = report_usage.attempt
                                  AND u.unit = d.usage_unit) AS first
              FROM (SELECT e ->> 'limit' AS name, coalesce(e ->> 'key', '') AS key,
                           sum(coalesce((e ->> 'units')::float8, 1)) AS estimate
                      FROM jsonb_array_elements(v_run.rate_cost) e GROUP BY 1, 2) c
              JOIN pgqueue.rate_limits d ON d.name = c.name AND d.key = ''
             WHERE d.usage_unit IS NOT NULL AND units ? d.usage_unit
             ORDER BY c.name, c.key  -- the claim's lock order
        LOOP
            PERFORM pgqueue.rate_bucket(v_charge.name, v_charge.key);  -- created if need be, locked
            UPDATE pgqueue.rate_limits b
               SET tokens = least(b.capacity,
                                  least(b.capacity, b.tokens + b.refill_per_s * extract(epoch FROM now() - b.refilled_at))
                                  + CASE WHEN v_charge.first THEN v_charge.estimate ELSE 0 END - v_charge.used),
                   refilled_at = now()
             WHERE b.name = v_charge.name AND b.key = v_charge.key;
        END LOOP;
    END IF;
    INSERT INTO pgqueue.usage (run_id, attempt, step_key, task, concurrency_key, unit, amount)
    SELECT run_id, attempt, step_key, v_run.task, v_run.concurrency_key, u.key, (u.value::text)::float8
      FROM jsonb_each(units) u;
    INSERT INTO pgqueue.usage_totals AS t (task, unit, amount)
    SELECT v_run.task, u.key, (u.value::text)::float8 FROM jsonb_each(units) u ORDER BY u.key
    ON CONFLICT ON CONSTRAINT usage_totals_pkey DO UPDATE SET amount = t.amount + excluded.amount;
END
$$;

COMMENT ON FUNCTION pgqueue.report_usage IS
    'Record what a run attempt actually used ({"tokens": 1200, "cost": 0.004}) and reconcile its rate-limit buckets.';

-- The reported unit the buckets of limit NAME count (NULL: none, the estimate stays charged).
-- A runtime setting, never overwritten by code (as pgqueue.set_rate_limit).
CREATE OR REPLACE FUNCTION pgqueue.set_rate_limit_usage(name text, unit text) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    IF unit IS NOT NULL THEN
        PERFORM pgqueue.check_name('usage unit', unit);
    END IF;
    UPDATE pgqueue.rate_limits r SET usage_unit = unit, source = 'runtime' WHERE r.name = name AND r.key = '';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: no rate limit named "%"', name USING ERRCODE = 'PQ003',
            HINT = 'Define it first (app.rate_limit(...) in code, or pgqueue.set_rate_limit(...)).';
    END IF;
END
$$;

-- Refuse runs whose rate cost (COSTS, one per run) needs more units of a bucket than its burst
-- (capacity): no refill ever makes them claimable. Called by the enqueue functions for rate-limited
-- runs only.
CREATE OR REPLACE FUNCTION pgqueue.check_rate_costs(task text, costs jsonb[]) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v record;
BEGIN
    SELECT c.name, c.key, c.units, coalesce(k.capacity, d.capacity) AS capacity INTO v
      FROM unnest(costs) AS cost(doc) CROSS JOIN LATERAL (
           SELECT e ->> 'limit' AS name, coalesce(e ->> 'key', '') AS key,
                  sum(coalesce((e ->> 'units')::float8, 1)) AS units
             FROM jsonb_array_elements(CASE WHEN jsonb_typeof(cost.doc) = 'array' THEN cost.doc ELSE '[]' END) e
            GROUP BY 1, 2) c
      JOIN pgqueue.rate_limits d ON d.name = c.name AND d.key = ''
      LEFT JOIN pgqueue.rate_limits k ON k.name = c.name AND k.key = c.key AND c.key <> ''
     WHERE c.units > coalesce(k.capacity, d.capacity)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgqueue: a run of task "%" needs % units of rate limit "%"%, more than its burst of %: it could never start',
            task, v.units, v.name, CASE WHEN v.key <> '' THEN format(' (key %s)', to_json(v.key)) ELSE '' END,
            v.capacity USING ERRCODE = 'PQ002',
            HINT = 'Raise the limit''s burst (app.rate_limit(..., burst=...) or pgqueue.set_rate_limit), '
                   'or split the work into smaller runs.';
    END IF;
END
$$;

-- Fail queued run RUN_ID, which needs NEED units of bucket (LIMIT_NAME, KEY) whose burst is
-- CAPACITY (it was lowered after the enqueue): it could never start, and deferring it would keep
-- it queued for ever. Called by take_rate_units (claim.sql), which holds the run's `ready` row.
CREATE OR REPLACE FUNCTION pgqueue.refuse_over_burst(run_id bigint, limit_name text, key text,
                                                     need double precision, capacity double precision)
RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_parent bigint;
BEGIN
    DELETE FROM pgqueue.ready r WHERE r.run_id = run_id;
    UPDATE pgqueue.runs r
       SET status = 'failed', finished_at = now(),
           error = jsonb_build_object(
               'type', 'RateLimitOverBurst',
               'message', format('the run needs %s units of rate limit %s%s, more than its burst of %s: it could '
                                 'never start. Raise the burst (app.rate_limit(..., burst=...) or '
                                 'pgqueue.set_rate_limit), then retry the run', need, to_json(limit_name),
                                 CASE WHEN key <> '' THEN format(' (key %s)', to_json(key)) ELSE '' END, capacity))
     WHERE r.id = run_id AND r.status IN ('queued', 'sleeping', 'waiting')
    RETURNING r.parent_id INTO v_parent;
    IF FOUND THEN
        PERFORM pgqueue.finish_children(ARRAY[v_parent]);
        PERFORM pg_notify('pgqueue_done', '');
    END IF;
END
$$;
