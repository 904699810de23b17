-- Keyed sessions: invocations of one (session, key) run one at a time in arrival order, with a
-- durable state per key (docs/sessions.md). The admission and hand-over are triggers
-- (sql/functions/triggers.sql): every path that queues a run (enqueue, retry, wake-up, rescue,
-- replay) and every path that finishes one (outcome, cancel, expiry, dead) goes through them.

-- Give the key of SESSION to its next invocation: the first run in its inbox that is still
-- queued (runs cancelled while they waited are dropped), which enters `ready`; none: the key is
-- idle. The caller holds the key's row lock.
CREATE OR REPLACE FUNCTION pgqueue.session_hand_on(session text, key text) RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_next pgqueue.session_inbox;
    v_run  pgqueue.runs;
BEGIN
    LOOP
        DELETE FROM pgqueue.session_inbox i
         WHERE i.seq = (SELECT j.seq FROM pgqueue.session_inbox j
                         WHERE j.session = session_hand_on.session AND j.key = session_hand_on.key
                         ORDER BY j.seq LIMIT 1)
        RETURNING * INTO v_next;
        IF NOT FOUND THEN
            UPDATE pgqueue.session_keys k SET active_run = NULL, updated_at = now()
             WHERE k.session = session_hand_on.session AND k.key = session_hand_on.key;
            RETURN NULL;
        END IF;
        SELECT * INTO v_run FROM pgqueue.runs r WHERE r.id = v_next.run_id;
        IF FOUND AND v_run.status = 'queued' THEN
            UPDATE pgqueue.session_keys k
               SET active_run = v_run.id, base_run = NULL, invocations = k.invocations + 1, updated_at = now()
             WHERE k.session = session_hand_on.session AND k.key = session_hand_on.key;
            -- admitted by ready_admit_session: the run now holds the key
            INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
            VALUES (v_run.id, v_run.queue, v_run.priority, v_run.run_at, v_run.task, v_run.concurrency_key);
            IF v_run.run_at <= now() THEN
                PERFORM pg_notify('pgqueue_ready', v_run.queue);
            END IF;
            RETURN v_run.id;
        END IF;
    END LOOP;
END
$$;

-- Refuse a session name no worker has declared.
CREATE OR REPLACE FUNCTION pgqueue.check_session(session text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pgqueue.sessions s WHERE s.name = check_session.session) THEN
        RAISE EXCEPTION 'pgqueue: unknown session "%": no worker has declared it', session
            USING ERRCODE = 'PQ005',
            HINT = 'Check the name (`pgqueue sessions list`), or start a worker of the app that declares it '
                   'with @app.session(...).';
    END IF;
END
$$;

-- The state of KEY in SESSION as of its last checkpoint ('{}' for a key never invoked).
CREATE OR REPLACE FUNCTION pgqueue.session_state(session text, key text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    PERFORM pgqueue.check_session(session_state.session);
    RETURN coalesce((SELECT k.state FROM pgqueue.session_keys k
                      WHERE k.session = session_state.session AND k.key = session_state.key), '{}');
END
$$;

COMMENT ON FUNCTION pgqueue.session_state IS
    'The durable state of KEY in SESSION as of its last checkpoint (''{}'' for a key never invoked).';
