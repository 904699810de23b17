-- pgqueue schema, version 15: enqueue control (debounce, singleton, throttle, batch).
-- The functions that apply it are in sql/functions/enqueue_control.sql.

-- A task's debounce, singleton and throttle rules, as workers register them (NULL: none, the
-- common case, which costs enqueue and claim nothing more):
-- {"debounce": {"key_field": f, "window_s": n, "max_wait_s": n or null},
--  "singleton": {"key_field": f, "on_conflict": "skip" | "replace"},
--  "throttle": {"key_field": f, "limit": n, "period_s": n},
--  "batch": {"key_field": f, "size": n, "wait_s": n, "park_s": n}}   (key_field null: one key for the task)
ALTER TABLE pgqueue.tasks ADD COLUMN control jsonb;

-- a debounced, singleton or batched run's key, and a throttled run's key (NULL for other runs);
-- of a batch item set aside for the batch another run leads: that run's id
ALTER TABLE pgqueue.runs ADD COLUMN control_key text, ADD COLUMN throttle_key text, ADD COLUMN batch_id bigint;

-- the active runs of a debounce or singleton key: what an enqueue of that key looks for
CREATE INDEX runs_control_active ON pgqueue.runs (task, control_key)
    WHERE control_key IS NOT NULL AND status IN ('queued', 'running', 'sleeping', 'waiting');

-- the items a batch's leader set aside (what its worker reads and finishes)
CREATE INDEX runs_batch ON pgqueue.runs (batch_id) WHERE batch_id IS NOT NULL;

-- The start times of a throttle key within its last period (at most `limit` of them): the claim
-- locks the row, so that claimers of one key count each other's starts.
CREATE TABLE pgqueue.throttle_windows (
    task   text NOT NULL,
    key    text NOT NULL,
    starts timestamptz[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (task, key)
);
