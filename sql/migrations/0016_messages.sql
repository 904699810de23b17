-- pgqueue schema, version 16: messages to running runs (signals and updates), the state a run
-- publishes for queries, and tasks cancelled by an event. The functions are in
-- sql/functions/messages.sql.

-- A run's mailbox: messages sent to it (`app.send`, `pgqueue.send_message`), taken by its
-- `ctx.receive(name)` in id order (send order: ids of one run are handed out under the run's
-- message lock), each once. Which ones a run took is in its steps (a receive step's output holds
-- the message id), so a replay takes the same messages again and a replay from the start gets
-- them all back. An update is a message whose sender waits for the run's reply.
CREATE TABLE pgqueue.messages (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      bigint NOT NULL,
    name        text NOT NULL,
    payload     jsonb NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    -- an update (`app.update`): its sender waits for the reply
    wants_reply boolean NOT NULL DEFAULT false,
    reply       jsonb,
    replied_at  timestamptz
);
CREATE INDEX messages_run_name ON pgqueue.messages (run_id, name, id);

-- A run suspended in `ctx.receive(name)`: a message of that name wakes it.
CREATE TABLE pgqueue.message_waits (
    run_id     bigint PRIMARY KEY,
    step_key   text NOT NULL,
    name       text NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    timeout_at timestamptz
);

-- The latest state a run published (`ctx.set_state`), read by queries without waking the run.
CREATE TABLE pgqueue.run_states (
    run_id     bigint PRIMARY KEY,
    state      jsonb NOT NULL,
    -- the attempt that wrote it
    attempt    integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Tasks whose unfinished runs are cancelled (with their children) when an event is sent whose
-- payload has the same value at `match` as the run's input (`@app.task(cancel_on=...)`);
-- `match` NULL: every unfinished run of the task.
CREATE TABLE pgqueue.cancel_subscriptions (
    event_name text NOT NULL,
    task       text NOT NULL,
    match      text,
    PRIMARY KEY (event_name, task)
);

-- Size of a published state (stored jsonb size), enforced by pgqueue.set_run_state.
ALTER TABLE pgqueue.settings DROP CONSTRAINT settings_name_check;
ALTER TABLE pgqueue.settings ADD CONSTRAINT settings_name_check
    CHECK (name IN ('max_input_bytes', 'max_metadata_bytes', 'max_stream_chunk_bytes', 'max_stream_chunks',
                    'max_state_bytes'));
INSERT INTO pgqueue.settings (name, value) VALUES ('max_state_bytes', 65536);
