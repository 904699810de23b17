-- Usage accounting (sql/functions/usage.sql): what runs report they actually used (LLM tokens,
-- cost, any unit), the all-time totals the metrics count, and which reported unit a rate limit
-- counts (its buckets are then reconciled with the usage instead of the estimate).

-- One row per unit of each report (ctx.report_usage), with the run's task and concurrency key
-- copied in, so that usage per task and key is read without the runs (and outlives no run: it
-- is pruned with its run tree).
CREATE TABLE pgqueue.usage (
    run_id          bigint NOT NULL,
    attempt         integer NOT NULL,
    -- the step that reported it (NULL: reported outside a step)
    step_key        text,
    task            text NOT NULL,
    concurrency_key text,
    unit            text NOT NULL,
    amount          double precision NOT NULL CHECK (amount >= 0),
    reported_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_run ON pgqueue.usage (run_id, attempt);
CREATE INDEX usage_reported_at ON pgqueue.usage (reported_at);

-- All-time totals per task and unit, for the metrics' counters (never decreased by pruning).
CREATE TABLE pgqueue.usage_totals (
    task   text NOT NULL,
    unit   text NOT NULL,
    amount double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (task, unit)
);

-- Of a limit's definition (key ''): the reported unit its buckets count (e.g. 'tokens'). The
-- estimate a run was charged at claim is then replaced by what it reports.
ALTER TABLE pgqueue.rate_limits ADD COLUMN usage_unit text;
