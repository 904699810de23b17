-- Claiming runs: what workers call to take work, with the concurrency, fairness and rate-limit
-- decisions made inside it.
--
-- Claim order within a queue (documented in the README):
--   1. higher priority first;
--   2. at equal priority, runs without a concurrency key are taken oldest first (run_at, id),
--      and runs with a key round-robin across keys: each keyed run gets a per-key sequence
--      number (fair_seq, set by the trigger function in triggers.sql) when it enters `ready`,
--      one more than the last queued run of its key, but never below the queue's current
--      front. A key that enqueues 100,000 runs takes sequence numbers 100,000 deep; a key
--      arriving later starts at the front and is served alongside it, one run per key per round;
--   3. the two kinds alternate: the k-th best unkeyed run and the k-th best keyed run rank alike.

-- Keyed runs worth claiming while some keys are FULL (at their limit): up to twice WANTED
-- run ids in claim order (twice, so that claimers racing for the same runs still find some
-- their rivals did not lock). The rows of full keys are not claimable, and a full key with a
-- large backlog would make an index scan that filters them out read all of it; so the scan in
-- claim order stops after a bounded number of rows (the window's run condition, PostgreSQL
-- 15+), and if that did not find enough, one due run per key that is not full is taken from
-- a skip scan over the keys (its cost grows with the number of keys, never with the backlog).
CREATE OR REPLACE FUNCTION pgqueue.keyed_candidates(served text[], "full" text[], wanted integer) RETURNS bigint[]
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
                 WHERE r.queue = q.name AND r.concurrency_key IS NOT NULL AND r.needs IS NULL
                   AND r.run_at <= now()) AS w
             WHERE w.n <= v_cap AND NOT (w.task || E'\x1f' || w.concurrency_key = ANY ("full"))
             LIMIT 2 * wanted) AS s);
    -- enough, or the scan saw every due keyed run: nothing deeper to find
    IF cardinality(v_found) >= 2 * wanted OR NOT EXISTS (
        SELECT 1 FROM unnest(served) AS q(name) CROSS JOIN LATERAL (
            SELECT 1 FROM pgqueue.ready r
             WHERE r.queue = q.name AND r.concurrency_key IS NOT NULL AND r.needs IS NULL AND r.run_at <= now()
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
               AND r.queue = ANY (served) AND r.run_at <= now() AND r.needs IS NULL
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
--
-- Its statements run on generic plans (plan_cache_mode): each is written to follow an index
-- whatever its parameters, and planning them anew at every call (plpgsql's default when a
-- generic plan's estimate looks worse) cost more than the rest of a small claim (0.4 of 0.65 ms).
-- LABELS: the worker's labels ('name=value', and '@version=V'), for placed runs (placement.sql).
CREATE OR REPLACE FUNCTION pgqueue.claim(worker uuid, queues text[], max_runs integer, lease_s double precision,
                                         labels text[] DEFAULT NULL)
RETURNS TABLE (id bigint, task text, input jsonb, attempt integer, failures integer, expired boolean,
               queue text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
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
    v_placed  bigint[];
    v_labels  text[];
    v_gated   text[];
    k         record;
BEGIN
    SELECT coalesce(array_agg(u.name), '{}') INTO v_served FROM unnest(claim.queues) AS u(name)
     WHERE NOT EXISTS (SELECT 1 FROM pgqueue.queues p WHERE p.name = u.name AND p.paused);
    -- per queue and in the keyed claim index's order: the planner, unsure how many keyed rows
    -- there are, would otherwise read the whole of `ready` (the whole backlog) to find none
    v_keyed := EXISTS (
        SELECT 1 FROM unnest(v_served) AS q(name) CROSS JOIN LATERAL (
            SELECT 1 FROM pgqueue.ready r
             WHERE r.queue = q.name AND r.concurrency_key IS NOT NULL AND r.needs IS NULL
             ORDER BY r.priority DESC, r.fair_seq, r.run_at, r.run_id
             LIMIT 1) AS k);
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
    -- placement (sql/functions/placement.sql): runs with required or preferred labels, a slot
    -- cost, stickiness or a pinned version are found apart, among those this worker may take
    IF EXISTS (SELECT 1 FROM unnest(v_served) AS q(name) CROSS JOIN LATERAL (
                   SELECT 1 FROM pgqueue.ready r WHERE r.queue = q.name AND r.needs IS NOT NULL LIMIT 1) AS p) THEN
        v_labels := pgqueue.claim_labels(claim.worker, claim.labels);
        v_placed := pgqueue.placed_candidates(v_served, v_labels, max_runs);
    END IF;
    SELECT array_agg(c) INTO v_cands FROM (
        SELECT p.* FROM unnest(v_served) AS q(name) CROSS JOIN LATERAL (
            SELECT r.run_id, r.priority, r.run_at, r.task, r.concurrency_key, r.fair_seq
              FROM pgqueue.ready r
             WHERE r.queue = q.name AND r.concurrency_key IS NULL AND r.needs IS NULL AND r.run_at <= now()
             ORDER BY r.priority DESC, r.run_at, r.run_id
             LIMIT max_runs
               FOR UPDATE SKIP LOCKED) AS p
        UNION ALL
        SELECT f.* FROM unnest(v_served) AS q(name) CROSS JOIN LATERAL (
            SELECT r.run_id, r.priority, r.run_at, r.task, r.concurrency_key, r.fair_seq
              FROM pgqueue.ready r
             WHERE v_keyed AND v_found IS NULL
               AND r.queue = q.name AND r.concurrency_key IS NOT NULL AND r.needs IS NULL AND r.run_at <= now()
             ORDER BY r.priority DESC, r.fair_seq, r.run_at, r.run_id
             LIMIT max_runs
               FOR UPDATE SKIP LOCKED) AS f
        UNION ALL
        SELECT x.* FROM (
            SELECT r.run_id, r.priority, r.run_at, r.task, r.concurrency_key, r.fair_seq
              FROM pgqueue.ready r
             WHERE r.run_id = ANY (v_found) AND r.needs IS NULL AND r.run_at <= now()
             ORDER BY r.priority DESC, r.fair_seq, r.run_at, r.run_id
             LIMIT max_runs
               FOR UPDATE SKIP LOCKED) AS x
        UNION ALL
        -- placed runs, checked again once locked (the row may have been claimed and queued anew)
        SELECT y.* FROM (
            SELECT r.run_id, r.priority, r.run_at, r.task, r.concurrency_key, r.fair_seq
              FROM pgqueue.ready r
             WHERE r.run_id = ANY (v_placed) AND r.run_at <= now() AND r.needs <@ v_labels
               AND (r.prefers IS NULL OR r.prefer_until <= now() OR r.prefers <@ v_labels)
             ORDER BY r.priority DESC, r.run_at, r.run_id
             LIMIT max_runs
               FOR UPDATE SKIP LOCKED) AS y
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
    IF v_placed IS NOT NULL THEN
        v_take := pgqueue.fit_slots(v_take, max_runs);  -- runs taking several slots (placement.sql)
    END IF;

    -- rate limits, throttles and singleton waits, for the runs of tasks that have any
    SELECT array_agg(t.name) FILTER (WHERE t.rate_limits IS NOT NULL),
           array_agg(t.name) FILTER (WHERE t.control ?| ARRAY['throttle', 'batch']
                                           OR t.control -> 'singleton' ->> 'on_conflict' = 'replace')
      INTO v_rated, v_gated FROM pgqueue.tasks t
     WHERE t.rate_limits IS NOT NULL
        OR t.control ?| ARRAY['throttle', 'batch'] OR t.control -> 'singleton' ->> 'on_conflict' = 'replace';
    -- throttles, singleton runs waiting for the run they replaced to stop, batches gathering their
    -- items (enqueue_control.sql); before the rate limits, so that a run deferred here takes no units
    IF EXISTS (SELECT 1 FROM unnest(v_cands) c WHERE c.run_id = ANY (v_take) AND c.task = ANY (v_gated)) THEN
        v_take := pgqueue.control_claim(v_take);
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(v_cands) c WHERE c.run_id = ANY (v_take) AND c.task = ANY (v_rated)) THEN
        v_take := pgqueue.take_rate_units(v_take);
    END IF;

    IF cardinality(v_cancel) > 0 THEN
        PERFORM pgqueue.cancel_by_strategy(v_cancel);
    END IF;

    RETURN QUERY
    WITH taken AS (
        DELETE FROM pgqueue.ready r WHERE r.run_id = ANY (v_take) RETURNING r.run_id, r.needs IS NOT NULL AS placed
    )
    UPDATE pgqueue.runs AS run
       SET status = 'running',
           attempt = run.attempt + 1,
           attempt_started_at = now(),
           started_at = coalesce(run.started_at, now()),
           worker_id = claim.worker,
           lease_expires_at = now() + make_interval(secs => claim.lease_s),
           -- placed runs remember their worker (sticky) and the version that started them (pinned)
           last_worker = CASE WHEN taken.placed THEN claim.worker ELSE run.last_worker END,
           started_version = CASE WHEN taken.placed
                                  THEN coalesce(run.started_version,
                                                (SELECT substr(l, 10) FROM unnest(v_labels) l
                                                  WHERE l LIKE '@version=%' LIMIT 1))
                                  ELSE run.started_version END
      FROM taken
     WHERE run.id = taken.run_id AND run.status IN ('queued', 'sleeping', 'waiting')
       -- past its run-level deadline no attempt starts: the expirer fails the run (it finds it
       -- by runs_deadline, with or without its row in `ready`)
       AND (run.deadline_at IS NULL OR run.deadline_at > now())
    RETURNING run.id, run.task, run.input, run.attempt, run.failures,
              coalesce(run.expires_at < now(), false), run.queue;
END
$$;

-- Of the runs RUN_IDS (in claim order), those whose rate-limit units could be taken now; the
-- others are moved to when their units will be there (a hold's end, or the refill time,
-- counting the units of runs deferred before them by this claim).
CREATE OR REPLACE FUNCTION pgqueue.take_rate_units(run_ids bigint[]) RETURNS bigint[]
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
            IF v_need.units > v_b.capacity THEN
                -- more than the bucket ever holds (its burst was lowered after the enqueue, which
                -- refuses such runs): deferring it would keep it queued for ever; fail it (usage.sql)
                PERFORM pgqueue.refuse_over_burst(v_run.id, v_need.name, v_need.key, v_need.units, v_b.capacity);
                v_ok := NULL;
                EXIT;
            ELSIF v_b.held_until > now() THEN
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
        IF v_ok IS NULL THEN
            CONTINUE;  -- refused (failed) above: neither taken nor deferred
        ELSIF v_ok THEN
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
CREATE OR REPLACE FUNCTION pgqueue.cancel_by_strategy(run_ids bigint[]) RETURNS void
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
