-- Queries of keyed sessions (pgqueue/sessions.py). The state writes are fenced like steps
-- (see the top of durable.sql): they apply only while the run holds its key and is running this
-- attempt on this worker, and lock the run's row FOR SHARE until they commit.

-- name: register
INSERT INTO pgqueue.sessions (name, key_field) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET key_field = excluded.key_field, registered_at = now()
 WHERE sessions.key_field IS DISTINCT FROM excluded.key_field

-- name: begin
-- An attempt starts: the state it replays from. The first attempt of an invocation takes the
-- key's current state as its base; later attempts (retry, wake-up, rescue) get that same base
-- back, whatever the earlier attempts saved since (they replay the same steps onto it).
-- No row: the run is no longer running here; holds false: it runs without holding its key.
WITH run AS (
    SELECT r.id, r.task, r.concurrency_key FROM pgqueue.runs r
     WHERE r.id = %(run)s AND r.attempt = %(attempt)s AND r.status = 'running' AND r.worker_id = %(worker)s
       FOR SHARE
), began AS (
    UPDATE pgqueue.session_keys k
       SET base_state = CASE WHEN k.base_run IS DISTINCT FROM k.active_run THEN k.state ELSE k.base_state END,
           base_run = k.active_run
      FROM run
     WHERE k.session = run.task AND k.key = run.concurrency_key AND k.active_run = run.id
    RETURNING k.key, k.base_state
)
SELECT began.key IS NOT NULL AS holds, run.concurrency_key AS key, began.base_state
  FROM run LEFT JOIN began ON true

-- name: save
UPDATE pgqueue.session_keys k
   SET state = pgqueue.check_payload(%(state)s::jsonb,
                                     format('the state of session "%%s" key "%%s"', k.session, k.key)),
       updated_at = now()
 WHERE k.session = %(session)s AND k.key = %(key)s AND k.active_run = %(run)s AND k.base_run = %(run)s
   AND EXISTS (SELECT FROM pgqueue.runs r
                WHERE r.id = %(run)s AND r.attempt = %(attempt)s AND r.status = 'running'
                  AND r.worker_id = %(worker)s
                  FOR SHARE)
RETURNING k.key

-- name: state
SELECT pgqueue.session_state(%(session)s, %(key)s)

-- name: list_sessions
SELECT s.name, s.key_field, count(k.key) AS keys, count(k.active_run) AS active,
       (SELECT count(*) FROM pgqueue.session_inbox i WHERE i.session = s.name) AS waiting
  FROM pgqueue.sessions s LEFT JOIN pgqueue.session_keys k ON k.session = s.name
 GROUP BY s.name, s.key_field
 ORDER BY s.name

-- name: list_keys
SELECT k.key, k.active_run, k.invocations, k.updated_at, pg_column_size(k.state) AS state_bytes,
       (SELECT count(*) FROM pgqueue.session_inbox i WHERE i.session = k.session AND i.key = k.key) AS waiting
  FROM pgqueue.session_keys k
 WHERE k.session = %(session)s AND k.key > %(after)s
 ORDER BY k.key
 LIMIT %(limit)s
