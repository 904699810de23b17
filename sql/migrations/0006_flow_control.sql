-- pgqueue schema, version 6: flow control. Per-key concurrency limits decided inside the claim,
-- round-robin fairness across keys, token-bucket rate limits with fleet-wide holds, and trace
-- context at enqueue. The claim order is described at the top of sql/functions/claim.sql; the
-- functions are in claim.sql, flow.sql, enqueue.sql and triggers.sql.

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

-- A keyed run entering `ready` gets its place in the round-robin from this trigger. Its function
-- is in sql/functions/triggers.sql, which migrate creates at the start of every migration.
CREATE TRIGGER ready_fair_seq BEFORE INSERT ON pgqueue.ready
    FOR EACH ROW WHEN (NEW.concurrency_key IS NOT NULL) EXECUTE FUNCTION pgqueue.ready_fair_seq();

-- The enqueue functions took new parameters (the flow-control keys and the trace context). A
-- signature that changes is dropped by a migration: CREATE OR REPLACE in sql/functions would
-- add the new one beside it as an overload.
DROP FUNCTION IF EXISTS pgqueue.enqueue(text, jsonb, text, integer, timestamptz, interval, text, text[], jsonb,
                                        interval);
DROP FUNCTION IF EXISTS pgqueue.enqueue_one(text, jsonb, text, integer, timestamptz, interval, text, text[], jsonb,
                                            interval);
DROP FUNCTION IF EXISTS pgqueue.enqueue_many(text, jsonb[], text, integer, timestamptz, interval, text[], text[],
                                             jsonb, interval, bigint);

-- The candidates a claim considers (pgqueue.claim keeps them in an array of this type).
CREATE TYPE pgqueue.claim_candidate AS (
    run_id          bigint,
    priority        smallint,
    run_at          timestamptz,
    task            text,
    concurrency_key text,
    fair_seq        bigint
);
