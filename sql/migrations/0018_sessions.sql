-- pgqueue schema, version 18: keyed sessions (durable per-key state, one invocation per key at a
-- time, in arrival order). The functions are in sql/functions/sessions.sql and the trigger
-- functions in sql/functions/triggers.sql; docs/sessions.md describes the model.

-- The sessions an application declared (`@app.session(name, key=field)`), written by workers.
CREATE TABLE pgqueue.sessions (
    name          text PRIMARY KEY,
    -- the input field holding the key (also the task's concurrency_key_field)
    key_field     text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (session, key): which invocation holds the key, and the key's durable state.
-- The row lock serialises the decisions of one key: admitting an invocation, handing the key to
-- the next one, saving the state.
CREATE TABLE pgqueue.session_keys (
    session     text NOT NULL,
    key         text NOT NULL,
    -- the invocation holding the key (running, retrying, sleeping or waiting); NULL: idle
    active_run  bigint,
    -- the state as of the last checkpoint
    state       jsonb NOT NULL DEFAULT '{}',
    -- the state when invocation base_run started: what each of its attempts replays from
    base_state  jsonb,
    base_run    bigint,
    -- invocations that held the key so far
    invocations bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session, key)
);

-- Invocations waiting for their key, in arrival order (seq is taken under the key's row lock).
-- Their runs are `queued` without a row in `ready`: no claim ever sees them.
CREATE TABLE pgqueue.session_inbox (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session text NOT NULL,
    key     text NOT NULL,
    run_id  bigint NOT NULL UNIQUE
);
CREATE INDEX session_inbox_key ON pgqueue.session_inbox (session, key, seq);

-- A keyed run entering `ready` is admitted only while it holds its session's key (else it waits
-- in the inbox). Named to fire before ready_fair_seq (triggers fire in name order), so that a
-- run parked in the inbox costs no round-robin bookkeeping. Unkeyed rows skip it.
CREATE TRIGGER ready_admit_session BEFORE INSERT ON pgqueue.ready
    FOR EACH ROW WHEN (NEW.concurrency_key IS NOT NULL) EXECUTE FUNCTION pgqueue.ready_admit_session();

-- A keyed run that becomes final hands its session's key to the next invocation. Checked on
-- the row without calling the function for unkeyed runs and for other status changes.
CREATE TRIGGER runs_session_finished AFTER UPDATE OF status ON pgqueue.runs
    FOR EACH ROW WHEN (NEW.concurrency_key IS NOT NULL
                       AND NEW.status IN ('succeeded', 'failed', 'cancelled', 'dead')
                       AND OLD.status IN ('queued', 'running', 'sleeping', 'waiting'))
    EXECUTE FUNCTION pgqueue.session_run_finished();
