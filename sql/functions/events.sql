-- Events: a named, keyed payload. Runs waiting for it wake up; subscribed tasks start.
--
-- Mailbox rule: each wait of a run takes the next event (name, key) sent since the run was
-- created that this run has not taken yet, in send order, exactly once (see durable.find_event
-- in sql/queries/durable.sql): events sent before the wait are kept for it, never lost or
-- merged, and every run keeps its own place, so an event reaches every run waiting on its key.
-- Waits and sends on one (name, key) are serialised by a transaction-level advisory lock, so a
-- wait registered concurrently with a send is always either satisfied or woken, and the ids of
-- one (name, key) are in send order.

CREATE OR REPLACE FUNCTION pgqueue.event_lock(name text, key text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtext('pgqueue.event'), hashtext(name || chr(31) || key))
$$;

-- Queue again, due now, those of runs RUN_IDS that are waiting (a wait they were in has its
-- answer: an event, a message), and tell the workers of their queues; returns how many it woke.
CREATE OR REPLACE FUNCTION pgqueue.wake_waiting(run_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_woken    integer;
    v_notified integer;
BEGIN
    WITH woken AS (
        UPDATE pgqueue.runs r SET status = 'queued', run_at = now()
         WHERE r.id = ANY(run_ids) AND r.status = 'waiting'
        RETURNING r.id, r.queue, r.priority, r.task, r.concurrency_key
    ), requeued AS (
        INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
        SELECT id, queue, priority, now(), task, concurrency_key FROM woken
        ON CONFLICT (run_id) DO UPDATE SET run_at = excluded.run_at
        RETURNING queue
    )
    SELECT (SELECT count(*) FROM woken),
           (SELECT count(pg_notify('pgqueue_ready', q.queue)) FROM (SELECT DISTINCT queue FROM requeued) q)
      INTO v_woken, v_notified;
    RETURN v_woken;
END
$$;

-- Send an event; returns how many waiting runs it woke.
CREATE OR REPLACE FUNCTION pgqueue.send_event(name text, key text DEFAULT '', payload jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_event    bigint;
    v_waiting  bigint[];
    v_woken    integer;
BEGIN
    IF send_event.name IS NULL OR send_event.name = '' THEN
        RAISE EXCEPTION 'pgqueue: event name is empty' USING ERRCODE = 'PQ002',
            HINT = 'e.g. SELECT pgqueue.send_event(''approval'', ''run-42'', ''{"approved": true}'')';
    END IF;
    PERFORM pgqueue.check_name('event', send_event.name);
    PERFORM pgqueue.check_payload(send_event.payload, format('the payload of event "%s"', send_event.name));
    PERFORM pgqueue.event_lock(send_event.name, coalesce(send_event.key, ''));
    INSERT INTO pgqueue.events (name, key, payload)
    VALUES (send_event.name, coalesce(send_event.key, ''), coalesce(send_event.payload, '{}'))
    RETURNING id INTO v_event;

    -- A run has a wait registered only if, under the key's lock, its mailbox held nothing when it
    -- came to wait: this event is the next one for each of them. The answered step records it as
    -- the run's new place; events sent after this one stay in the mailbox for the run's next wait.
    WITH waits AS (
        DELETE FROM pgqueue.event_waits w
         WHERE w.event_name = send_event.name AND w.event_key = coalesce(send_event.key, '')
        RETURNING w.run_id, w.step_key, w.seq
    ), answered AS (
        INSERT INTO pgqueue.steps (run_id, step_key, seq, name, status, output, finished_at, event_id)
        SELECT waits.run_id, waits.step_key, waits.seq, 'event:' || send_event.name, 'succeeded',
               coalesce(send_event.payload, '{}'), now(), v_event
          FROM waits
        ON CONFLICT (run_id, step_key) DO NOTHING
    )
    SELECT array_agg(waits.run_id) INTO v_waiting FROM waits;
    v_woken := pgqueue.wake_waiting(v_waiting);

    -- runs of tasks declared with cancel_on this event, matching its payload (before the
    -- subscribed tasks start: a task may both start on an event and be cancelled by it)
    PERFORM pgqueue.cancel_on_event(send_event.name, coalesce(send_event.payload, '{}'));

    -- tasks subscribed to this event start with the payload as input
    PERFORM pgqueue.enqueue_one(s.task, coalesce(send_event.payload, '{}'))
       FROM pgqueue.event_subscriptions s WHERE s.event_name = send_event.name;
    RETURN v_woken;
END
$$;
