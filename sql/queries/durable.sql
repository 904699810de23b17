-- Queries of durable execution: step checkpoints, durable sleep, waiting for events.
-- Every write is fenced: it applies only while the run is running this attempt on this worker.
--
-- A fence that only reads the run row (INSERT ... SELECT ... FROM runs WHERE attempt = ...) must
-- also lock it, until its transaction commits: a rescue, completion, suspension or cancellation
-- committed after the check but before the commit would otherwise let this attempt's writes
-- commit after another attempt was given the run (with step_in_transaction: the user's effect
-- twice). Those writers UPDATE non-key columns of the row (a FOR NO KEY UPDATE lock) or lock it
-- FOR UPDATE (the rescue's SKIP LOCKED, cancel_run); FOR KEY SHARE conflicts with neither, so
-- the fences take FOR SHARE. Then either the other writer waits (the rescue skips the row) until
-- this transaction commits, or this fence waits for it and, re-reading the row under READ
-- COMMITTED, finds the run gone and writes nothing (RunTakenOver rolls the transaction back).
-- Fences that UPDATE the run row (suspend, add_children, wake_on_each_child, and worker.sql's
-- complete, heartbeat, hand_back) hold its row lock until commit and need nothing more.

-- name: load_steps
SELECT seq, step_key, status, output, error, attempts, now() AS db_now
  FROM pgqueue.steps
 WHERE run_id = %(run)s
 ORDER BY seq

-- name: record_step
-- event_id: of a wait step, the event it took (the run's place in that mailbox, see find_event)
INSERT INTO pgqueue.steps AS s (run_id, step_key, seq, name, status, output, error, attempts,
                                started_at, finished_at, event_id)
SELECT %(run)s, %(key)s, %(seq)s, %(name)s, %(status)s,
       pgqueue.check_payload(%(output)s::jsonb, format('the output of step "%%s"', %(key)s::text)),
       %(error)s::jsonb, 1, now() - make_interval(secs => %(duration)s), now(), %(event_id)s::bigint
  FROM pgqueue.runs r
 WHERE r.id = %(run)s AND r.attempt = %(attempt)s AND r.status = 'running' AND r.worker_id = %(worker)s
   FOR SHARE OF r
ON CONFLICT (run_id, step_key) DO UPDATE
   SET status = excluded.status, output = excluded.output, error = excluded.error,
       attempts = s.attempts + 1, started_at = excluded.started_at, finished_at = excluded.finished_at,
       event_id = excluded.event_id
RETURNING s.attempts

-- name: begin_sleep
-- Record a durable sleep's wake time as a step that is not over yet: `until` (sleep_until) or
-- `seconds` from now, on the database clock only (a worker's clock may be off), never in the past.
INSERT INTO pgqueue.steps AS s (run_id, step_key, seq, name, status, output)
SELECT %(run)s, %(key)s, %(seq)s, 'sleep', 'sleeping',
       jsonb_build_object('wake_at', greatest(now(), coalesce(%(until)s::timestamptz,
                                                              now() + make_interval(secs => %(seconds)s))))
  FROM pgqueue.runs r
 WHERE r.id = %(run)s AND r.attempt = %(attempt)s AND r.status = 'running' AND r.worker_id = %(worker)s
   FOR SHARE OF r
ON CONFLICT (run_id, step_key) DO UPDATE SET output = excluded.output
RETURNING (s.output ->> 'wake_at')::timestamptz

-- name: end_sleep
UPDATE pgqueue.steps SET status = 'succeeded', finished_at = now()
 WHERE run_id = %(run)s AND step_key = %(key)s
   AND EXISTS (SELECT FROM pgqueue.runs r
                WHERE r.id = %(run)s AND r.attempt = %(attempt)s AND r.status = 'running'
                  AND r.worker_id = %(worker)s
                  FOR SHARE)
RETURNING run_id

-- name: suspend
-- The run stops running without finishing: it sleeps until `wake_at`, or waits (for an event)
-- until woken or until `wake_at` (its timeout; none: only an event wakes it). It holds no
-- worker slot and no connection meanwhile. Fence: this UPDATE's row lock (see the top of the file),
-- which also covers the begin_sleep / register_wait written before it in the same transaction.
WITH suspended AS (
    UPDATE pgqueue.runs AS run
       SET status = %(status)s, run_at = coalesce(%(wake_at)s, run.run_at),
           worker_id = NULL, lease_expires_at = NULL
     WHERE run.id = %(run)s AND run.attempt = %(attempt)s AND run.status = 'running'
       AND run.worker_id = %(worker)s
    RETURNING run.id, run.queue, run.priority, run.task, run.concurrency_key, run.attempt,
              run.attempt_started_at
), requeued AS (
    INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
    SELECT id, queue, priority, %(wake_at)s, task, concurrency_key FROM suspended
     WHERE %(wake_at)s::timestamptz IS NOT NULL
), recorded AS (
    INSERT INTO pgqueue.attempts (run_id, attempt, worker_id, started_at, finished_at, outcome, error_message,
                                  logs)
    SELECT id, attempt, %(worker)s, coalesce(attempt_started_at, now()), now(), 'suspended', %(reason)s,
           %(logs)s
      FROM suspended
    ON CONFLICT (run_id, attempt) DO NOTHING
)
SELECT id FROM suspended

-- name: event_lock
SELECT pgqueue.event_lock(%(name)s, %(event_key)s)

-- name: find_event
-- The run's mailbox of (name, key): the first event sent since the run was created that none of
-- its wait steps took yet. Its place is the last event one of its wait steps took (steps.event_id;
-- a run takes events in order, so everything up to its place is taken). Each run has its own
-- place: an event reaches every run waiting on its key. Replaying a run from an earlier step
-- deletes the later steps, and so gives their events back to the replay. Ids of one (name, key)
-- are handed out under the key's lock (pgqueue.send_event), so id order is send order.
SELECT e.id, e.payload
  FROM pgqueue.events e
 WHERE e.name = %(name)s AND e.key = %(event_key)s
   AND e.created_at >= (SELECT created_at FROM pgqueue.runs WHERE id = %(run)s)
   AND e.id > coalesce((SELECT max(s.event_id)
                          FROM pgqueue.steps s JOIN pgqueue.events taken ON taken.id = s.event_id
                         WHERE s.run_id = %(run)s AND taken.name = %(name)s AND taken.key = %(event_key)s), 0)
 ORDER BY e.id
 LIMIT 1

-- name: register_wait
INSERT INTO pgqueue.event_waits (run_id, step_key, seq, event_name, event_key, timeout_at)
SELECT %(run)s, %(key)s, %(seq)s, %(name)s, %(event_key)s, now() + make_interval(secs => %(timeout)s)
  FROM pgqueue.runs r
 WHERE r.id = %(run)s AND r.attempt = %(attempt)s AND r.status = 'running' AND r.worker_id = %(worker)s
   FOR SHARE OF r
ON CONFLICT (run_id, step_key) DO UPDATE SET since = pgqueue.event_waits.since
RETURNING timeout_at

-- name: wait_state
-- Of a wait registered by an earlier attempt: its timeout, and whether it has passed.
SELECT timeout_at, timeout_at <= now() AS timed_out
  FROM pgqueue.event_waits WHERE run_id = %(run)s AND step_key = %(key)s

-- name: drop_wait
DELETE FROM pgqueue.event_waits WHERE run_id = %(run)s AND step_key = %(key)s

-- name: send_event
SELECT pgqueue.send_event(%(name)s, %(event_key)s, %(payload)s::jsonb)

-- name: subscribe
INSERT INTO pgqueue.event_subscriptions (event_name, task) VALUES (%s, %s) ON CONFLICT DO NOTHING

-- name: add_children
-- Fence of a spawn: this UPDATE's row lock; the children enqueued before it in the transaction
-- roll back with it when the run was taken over.
UPDATE pgqueue.runs
   SET children_total = children_total + %(n)s, children_pending = children_pending + %(n)s
 WHERE id = %(run)s AND attempt = %(attempt)s AND status = 'running' AND worker_id = %(worker)s
RETURNING id

-- name: pending_children
-- Locks the parent's row: a child finishing now waits for this transaction, then sees its outcome.
SELECT children_pending FROM pgqueue.runs WHERE id = %(run)s FOR UPDATE

-- name: children_outcomes
SELECT c.id, c.status, c.result, c.error
  FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS want(id, ord)
  JOIN pgqueue.runs c ON c.id = want.id
 ORDER BY want.ord

-- name: workflow_nodes
SELECT workflow_node, id, status, result, error
  FROM pgqueue.runs
 WHERE parent_id = %(run)s AND workflow_node IS NOT NULL

-- name: mark_node
UPDATE pgqueue.runs SET workflow_node = %(node)s WHERE id = %(child)s

-- name: wake_on_each_child
UPDATE pgqueue.runs SET wake_on_each_child = true
 WHERE id = %(run)s AND attempt = %(attempt)s AND status = 'running' AND worker_id = %(worker)s
   AND NOT wake_on_each_child

-- name: cancel_children
SELECT pgqueue.cancel_run(id)
  FROM pgqueue.runs
 WHERE parent_id = %(run)s AND status IN ('queued', 'running', 'sleeping', 'waiting')

-- name: record_steps
-- The step checkpoints of many runs of one worker in one statement (pgqueue.record_steps, in
-- sql/functions/steps.sql); each is fenced like record_step: the rows returned are the ones written.
SELECT run_id, step_key, attempts
  FROM pgqueue.record_steps(%(worker)s, %(runs)s::bigint[], %(attempts)s::int[], %(keys)s::text[],
                            %(seqs)s::int[], %(names)s::text[], %(statuses)s::text[], %(outputs)s::text[],
                            %(errors)s::text[], %(durations)s::float8[])

-- name: max_payload
SELECT pgqueue.max_input_bytes()
