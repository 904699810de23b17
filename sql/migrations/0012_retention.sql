-- pgqueue schema: retention. How long finished runs and unconsumed events are kept, what the
-- pruner did last, and the indexes pruning needs. The functions are in sql/functions/retention.sql.

-- How long finished runs are kept: per final status for every task (task '*'), optionally per
-- task. 'events' (task '*' only) is how long an event no run waits for is kept. Rows written from
-- code (`@app.task(retention=...)`, and the defaults below) are refreshed by workers; rows set at
-- runtime (CLI, SQL) are marked 'runtime' and never overwritten by code.
CREATE TABLE pgqueue.retention_policies (
    task       text NOT NULL DEFAULT '*',
    status     text NOT NULL CHECK (status IN ('succeeded', 'failed', 'cancelled', 'dead', 'events')),
    keep       interval NOT NULL CHECK (keep > interval '0'),
    source     text NOT NULL DEFAULT 'code' CHECK (source IN ('code', 'runtime')),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task, status),
    CHECK (status <> 'events' OR task = '*')
);
INSERT INTO pgqueue.retention_policies (task, status, keep) VALUES
    ('*', 'succeeded', interval '7 days'),
    ('*', 'failed', interval '30 days'),
    ('*', 'cancelled', interval '30 days'),
    ('*', 'dead', interval '30 days'),
    ('*', 'events', interval '7 days');

-- What pruning removed. A few slots, so that concurrent pruners each update a row of their own
-- (SKIP LOCKED) instead of queueing on one: the last prune is the newest row, totals the sum.
CREATE TABLE pgqueue.prune_stats (
    slot             smallint PRIMARY KEY,
    -- the last call, whatever it removed
    last_called_at   timestamptz,
    -- the last call that removed something, and what it removed
    last_pruned_at   timestamptz,
    last_trees       bigint NOT NULL DEFAULT 0,
    last_runs        bigint NOT NULL DEFAULT 0,
    last_events      bigint NOT NULL DEFAULT 0,
    total_trees      bigint NOT NULL DEFAULT 0,
    total_runs       bigint NOT NULL DEFAULT 0,
    total_events     bigint NOT NULL DEFAULT 0,
    -- the largest run id pruned: `runs show` of a missing id below it says it was pruned
    max_pruned_id    bigint
);
INSERT INTO pgqueue.prune_stats (slot) SELECT generate_series(0, 3);

-- Trees: a root run (parent_id IS NULL) and every run below it (root_id = the root's id, at any
-- depth). Finished roots in finishing order: what the pruner reads first.
CREATE INDEX runs_root_finished ON pgqueue.runs (finished_at) WHERE parent_id IS NULL AND finished_at IS NOT NULL;
CREATE INDEX runs_root ON pgqueue.runs (root_id) WHERE root_id IS NOT NULL;
-- ticks are deleted with the runs they started
CREATE INDEX cron_ticks_run ON pgqueue.cron_ticks (run_id) WHERE run_id IS NOT NULL;
-- old events first
CREATE INDEX events_created_at ON pgqueue.events (created_at);
