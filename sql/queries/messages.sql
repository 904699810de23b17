-- Queries of messages to runs, published states and cancel-on-event subscriptions. The public
-- SQL API is sql/functions/messages.sql. Writes made by a running attempt (taking a message,
-- waiting, replying, publishing its state) are fenced like step checkpoints (see the top of
-- sql/queries/durable.sql): they apply only while the run is running this attempt on this worker,
-- locking the run row FOR SHARE until commit.

-- name: send
SELECT pgqueue.send_message(%(run)s, %(name)s, %(payload)s::jsonb, %(wants_reply)s)

-- name: lock
SELECT pgqueue.message_lock(%(run)s)

-- name: next
-- The run's mailbox of NAME: the first message its receive steps have not taken yet (the
-- receive steps of this name record the ids they took, in order: everything up to the largest
-- is taken). A replay from the start deletes those steps and so gives the messages back.
SELECT m.id, m.name, m.payload, m.sent_at, m.wants_reply
  FROM pgqueue.messages m
 WHERE m.run_id = %(run)s AND m.name = %(name)s
   AND m.id > coalesce((SELECT max((s.output ->> 'message_id')::bigint)
                          FROM pgqueue.steps s
                         WHERE s.run_id = %(run)s AND s.name = %(step_name)s AND s.status = 'succeeded'), 0)
 ORDER BY m.id
 LIMIT 1

-- name: get
SELECT id, name, payload, sent_at, wants_reply FROM pgqueue.messages WHERE id = %(id)s AND run_id = %(run)s

-- name: wait_state
-- The receive this run waits in (registered by an earlier attempt): its timeout, and whether it passed.
SELECT step_key, timeout_at, timeout_at <= now() AS timed_out
  FROM pgqueue.message_waits WHERE run_id = %(run)s

-- name: register_wait
INSERT INTO pgqueue.message_waits AS w (run_id, step_key, name, timeout_at)
SELECT %(run)s, %(key)s, %(name)s, now() + make_interval(secs => %(timeout)s)
  FROM pgqueue.runs r
 WHERE r.id = %(run)s AND r.attempt = %(attempt)s AND r.status = 'running' AND r.worker_id = %(worker)s
   FOR SHARE OF r
ON CONFLICT (run_id) DO UPDATE
   SET step_key = excluded.step_key, name = excluded.name, since = now(), timeout_at = excluded.timeout_at
RETURNING w.timeout_at

-- name: drop_wait
DELETE FROM pgqueue.message_waits WHERE run_id = %(run)s

-- name: reply
-- The first reply wins (a replayed run answers nothing twice); `fenced`: the attempt still holds the run.
WITH fence AS (
    SELECT r.id FROM pgqueue.runs r
     WHERE r.id = %(run)s AND r.attempt = %(attempt)s AND r.status = 'running' AND r.worker_id = %(worker)s
       FOR SHARE OF r
), replied AS (
    UPDATE pgqueue.messages m
       SET reply = pgqueue.check_payload(%(reply)s::jsonb, format('the reply to message %%s', m.id)),
           replied_at = now()
      FROM fence
     WHERE m.id = %(id)s AND m.run_id = fence.id AND m.wants_reply AND m.replied_at IS NULL
    RETURNING m.id, pg_notify('pgqueue_reply_' || m.run_id, m.id::text)
)
SELECT EXISTS (SELECT FROM fence) AS fenced, EXISTS (SELECT FROM replied) AS written

-- name: reply_state
SELECT replied, reply, run_status FROM pgqueue.message_reply(%(id)s)

-- name: set_state
INSERT INTO pgqueue.run_states AS s (run_id, state, attempt)
SELECT %(run)s, pgqueue.check_payload(%(state)s::jsonb, format('the state of run %%s', %(run)s::bigint),
                                      pgqueue.max_state_bytes()), %(attempt)s
  FROM pgqueue.runs r
 WHERE r.id = %(run)s AND r.attempt = %(attempt)s AND r.status = 'running' AND r.worker_id = %(worker)s
   FOR SHARE OF r
ON CONFLICT (run_id) DO UPDATE SET state = excluded.state, attempt = excluded.attempt, updated_at = now()
RETURNING s.run_id

-- name: state
SELECT r.status, s.state, s.attempt, s.updated_at
  FROM pgqueue.runs r LEFT JOIN pgqueue.run_states s ON s.run_id = r.id
 WHERE r.id = %(run)s

-- name: sync_cancel_on
-- The cancel-on-event subscriptions of the tasks registered (TASKS), as their code declares them now.
WITH declared AS (
    SELECT * FROM unnest(%(events)s::text[], %(subscribers)s::text[], %(matches)s::text[]) AS d(event_name, task, match)
), gone AS (
    DELETE FROM pgqueue.cancel_subscriptions c
     WHERE c.task = ANY(%(tasks)s::text[])
       AND NOT EXISTS (SELECT 1 FROM declared d WHERE d.event_name = c.event_name AND d.task = c.task)
)
INSERT INTO pgqueue.cancel_subscriptions (event_name, task, match)
SELECT event_name, task, match FROM declared
ON CONFLICT (event_name, task) DO UPDATE SET match = excluded.match
 WHERE cancel_subscriptions.match IS DISTINCT FROM excluded.match
