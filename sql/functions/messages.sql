-- Messages to running runs (signals and updates), published states (queries), cancel on event.
--
-- Mailbox rule: a run's `ctx.receive(name)` takes the first message of that name sent to the run
-- that none of its receive steps took yet (a receive step's output holds the id it took), in
-- send order, exactly once per run: the step is recorded in the transaction that takes the
-- message, so a crash before it commits leaves the message for the next attempt, and a replay
-- after it returns the same message. Sends and receives of one run are serialised by a
-- transaction-level advisory lock (pgqueue.message_lock): a receive that found nothing and
-- registers its wait commits before a concurrent send looks for waits, or the send's message is
-- visible to the receive. Ids of one run's messages are therefore in send order.
--
-- An update is a message sent with WANTS_REPLY: the run answers it once (`message.reply(value)`,
-- the first reply wins, so a replayed run cannot answer twice) and the sender, polling
-- pgqueue.message_reply or listening to pgqueue_reply_<run id>, gets the answer.
--
-- Limits: payloads and replies as other payloads (max_input_bytes, max_json_depth); a run's
-- published state at most max_state_bytes (default 64 KiB) of stored jsonb.

-- Serialise sends to and receives of run RUN_ID (until the end of the transaction).
CREATE OR REPLACE FUNCTION pgqueue.message_lock(run_id bigint) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtext('pgqueue.message'), hashtext(run_id::text))
$$;

-- Largest accepted state a run publishes (stored jsonb size). (pgqueue.setting, spelled out:
-- this file is applied before payload.sql defines it.)
CREATE OR REPLACE FUNCTION pgqueue.max_state_bytes() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT s.value FROM pgqueue.settings s WHERE s.name = 'max_state_bytes'), 65536)
$$;

-- Send message NAME with PAYLOAD (any JSON value) to run RUN_ID; returns the message's id. The
-- run reads it with ctx.receive(NAME): a run suspended in that receive wakes up; otherwise the
-- message waits in the run's mailbox (also for a run that has not started yet). WANTS_REPLY: an
-- update, whose sender waits for the run's reply (see pgqueue.message_reply). Refused for an
-- unknown run (PQ003) and a finished one (PQ004): nobody would ever read it.
CREATE OR REPLACE FUNCTION pgqueue.send_message(run_id bigint, name text, payload jsonb DEFAULT 'null',
                                                wants_reply boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_status  text;
    v_id      bigint;
    v_waiting bigint[];
BEGIN
    PERFORM pgqueue.check_name('message', send_message.name);
    PERFORM pgqueue.check_payload(coalesce(send_message.payload, 'null'),
                                  format('the payload of message "%s"', send_message.name));
    IF send_message.run_id IS NULL THEN
        RAISE EXCEPTION 'pgqueue: a message needs a run id (got NULL)' USING ERRCODE = 'PQ002',
            HINT = 'e.g. SELECT pgqueue.send_message(42, ''approve'', ''{"ok": true}'')';
    END IF;
    PERFORM pgqueue.message_lock(send_message.run_id);
    SELECT r.status INTO v_status FROM pgqueue.runs r WHERE r.id = send_message.run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: no run with id %', send_message.run_id USING ERRCODE = 'PQ003',
            HINT = 'Check the id (`pgqueue runs list`); finished runs are pruned after their retention.';
    END IF;
    IF v_status NOT IN ('queued', 'running', 'sleeping', 'waiting') THEN
        RAISE EXCEPTION 'pgqueue: run % is %: a finished run receives no more messages', send_message.run_id,
            v_status USING ERRCODE = 'PQ004',
            HINT = 'Send messages to runs that are queued, running, sleeping or waiting; retry the run first '
                   'to run it again.';
    END IF;
    INSERT INTO pgqueue.messages (run_id, name, payload, wants_reply)
    VALUES (send_message.run_id, send_message.name, coalesce(send_message.payload, 'null'),
            coalesce(send_message.wants_reply, false))
    RETURNING id INTO v_id;

    -- The run suspended in a receive of this name: queued again, its receive takes the message.
    WITH waits AS (
        DELETE FROM pgqueue.message_waits w
         WHERE w.run_id = send_message.run_id AND w.name = send_message.name
        RETURNING w.run_id
    )
    SELECT array_agg(waits.run_id) INTO v_waiting FROM waits;
    PERFORM pgqueue.wake_waiting(v_waiting);
    RETURN v_id;
END
$$;

-- The answer to update MESSAGE_ID: whether the run replied, its reply, and the run's status
-- (a final status without a reply: the run ended without answering). Unknown message: PQ003.
CREATE OR REPLACE FUNCTION pgqueue.message_reply(message_id bigint)
RETURNS TABLE (replied boolean, reply jsonb, run_status text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT m.replied_at IS NOT NULL, m.reply, coalesce(r.status, 'pruned')
      FROM pgqueue.messages m LEFT JOIN pgqueue.runs r ON r.id = m.run_id
     WHERE m.id = message_reply.message_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: no message with id %', message_reply.message_id USING ERRCODE = 'PQ003',
            HINT = 'Use the id pgqueue.send_message returned; messages are pruned with their run.';
    END IF;
END
$$;

-- The state run RUN_ID published last (ctx.set_state), NULL if none; read without waking the
-- run. An unknown run raises PQ003.
CREATE OR REPLACE FUNCTION pgqueue.run_state(run_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_state jsonb;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgqueue.runs r WHERE r.id = run_state.run_id) THEN
        RAISE EXCEPTION 'pgqueue: no run with id %', run_state.run_id USING ERRCODE = 'PQ003',
            HINT = 'Check the id (`pgqueue runs list`); finished runs are pruned after their retention.';
    END IF;
    SELECT s.state INTO v_state FROM pgqueue.run_states s WHERE s.run_id = run_state.run_id;
    RETURN v_state;
END
$$;

-- Cancel, with their children, the unfinished runs of the tasks subscribed to event NAME
-- (pgqueue.cancel_subscriptions) whose input has the same value at the subscription's `match`
-- field as PAYLOAD (an event without that field cancels nothing); returns how many runs it
-- cancelled or asked to stop. Called by pgqueue.send_event. Reads each subscribed task's runs
-- through runs_task_id: its cost grows with the runs of that task still kept (retention).
CREATE OR REPLACE FUNCTION pgqueue.cancel_on_event(name text, payload jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_sub    record;
    v_run    bigint;
    v_n      integer := 0;
    v_reason text;
BEGIN
    FOR v_sub IN SELECT c.task, c.match FROM pgqueue.cancel_subscriptions c
                  WHERE c.event_name = cancel_on_event.name ORDER BY c.task LOOP
        IF v_sub.match IS NOT NULL
           AND (jsonb_typeof(payload) IS DISTINCT FROM 'object' OR NOT payload ? v_sub.match) THEN
            CONTINUE;
        END IF;
        v_reason := CASE WHEN v_sub.match IS NULL THEN format('cancelled by event "%s"', cancel_on_event.name)
                         ELSE format('cancelled by event "%s" (%s = %s)', cancel_on_event.name, v_sub.match,
                                     left((payload -> v_sub.match)::text, 200)) END;
        FOR v_run IN
            SELECT r.id FROM pgqueue.runs r
             WHERE r.task = v_sub.task AND r.status IN ('queued', 'running', 'sleeping', 'waiting')
               AND (v_sub.match IS NULL OR r.input -> v_sub.match = payload -> v_sub.match)
             ORDER BY r.id
        LOOP
            -- a child of a run cancelled just before (its tree) is already done
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pgqueue.runs r WHERE r.id = v_run AND NOT r.cancel_requested
                                         AND r.status IN ('queued', 'running', 'sleeping', 'waiting'));
            IF pgqueue.cancel_run(v_run) IN ('cancelled', 'cancel_requested') THEN
                v_n := v_n + 1;
                UPDATE pgqueue.runs r SET error = jsonb_build_object('type', 'Cancelled', 'message', v_reason)
                 WHERE r.id = v_run AND r.status = 'cancelled';
            END IF;
        END LOOP;
    END LOOP;
    RETURN v_n;
END
$$;
