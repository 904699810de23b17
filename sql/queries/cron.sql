-- Queries of cron schedules (see pgqueue/cron.py). Times come from the database clock.

-- name: save
-- Write a schedule. From code (source = 'code'): rows edited at runtime are left alone,
-- `enabled` (pause/resume) is never changed, and only a new expression or zone restarts the
-- schedule from now. At runtime (source = 'runtime'): the row is replaced, marked as a runtime
-- edit that code never overwrites, and restarts from now. next_fire_at NULL is filled in by
-- the next firing pass, from updated_at (when the schedule was saved): a tick due between the
-- save and that pass still fires.
INSERT INTO pgqueue.cron_schedules AS c (name, expression, timezone, task, input, queue, priority,
                                         misfire_policy, catch_up_limit, source)
VALUES (pgqueue.check_name('schedule', %(name)s), %(expression)s, %(timezone)s, %(task)s,
        pgqueue.check_payload(%(input)s::jsonb, 'the input of a schedule'), %(queue)s, %(priority)s,
        %(misfire)s, %(catch_up_limit)s, %(source)s)
ON CONFLICT (name) DO UPDATE
   SET expression = excluded.expression, timezone = excluded.timezone, task = excluded.task,
       input = excluded.input, queue = excluded.queue, priority = excluded.priority,
       misfire_policy = excluded.misfire_policy, catch_up_limit = excluded.catch_up_limit,
       source = excluded.source,
       next_fire_at = CASE WHEN excluded.source = 'code'
                            AND (c.expression, c.timezone) = (excluded.expression, excluded.timezone)
                           THEN c.next_fire_at END,
       updated_at = now()
 WHERE excluded.source = 'runtime'
    OR (c.source = 'code'
        AND (c.expression, c.timezone, c.task, c.input, c.queue, c.priority, c.misfire_policy, c.catch_up_limit)
            IS DISTINCT FROM (excluded.expression, excluded.timezone, excluded.task, excluded.input,
                              excluded.queue, excluded.priority, excluded.misfire_policy, excluded.catch_up_limit))

-- name: task_known
SELECT 1 FROM pgqueue.tasks WHERE name = %(task)s

-- name: set_enabled
-- Resuming restarts from now: ticks missed while paused are not caught up.
UPDATE pgqueue.cron_schedules
   SET enabled = %(enabled)s, next_fire_at = CASE WHEN %(enabled)s THEN NULL ELSE next_fire_at END,
       updated_at = now()
 WHERE name = %(name)s
RETURNING name

-- name: delete
DELETE FROM pgqueue.cron_schedules WHERE name = %(name)s RETURNING name

-- name: get
SELECT task, input, queue, priority FROM pgqueue.cron_schedules WHERE name = %(name)s

-- name: list
SELECT name, expression, timezone, task, input, enabled, misfire_policy, next_fire_at, last_fire_at, source
  FROM pgqueue.cron_schedules
 ORDER BY name

-- name: due
SELECT name, expression, timezone, task, input, queue, priority, misfire_policy, catch_up_limit,
       next_fire_at, updated_at, now() AS now,
       -- an enqueue naming no queue is refused for a task no worker registered
       EXISTS (SELECT FROM pgqueue.tasks t WHERE t.name = cron_schedules.task) AS task_known
  FROM pgqueue.cron_schedules
 WHERE enabled AND (next_fire_at IS NULL OR next_fire_at <= now())
 ORDER BY next_fire_at NULLS FIRST
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED

-- name: claim_tick
INSERT INTO pgqueue.cron_ticks (schedule, tick_at) VALUES (%(name)s, %(tick)s)
ON CONFLICT DO NOTHING
RETURNING tick_at

-- name: tick_run
UPDATE pgqueue.cron_ticks SET run_id = %(run)s WHERE schedule = %(name)s AND tick_at = %(tick)s

-- name: advance
UPDATE pgqueue.cron_schedules
   SET next_fire_at = %(next)s, last_fire_at = coalesce(%(last)s, last_fire_at)
 WHERE name = %(name)s

-- name: disable_broken
UPDATE pgqueue.cron_schedules SET enabled = false, updated_at = now() WHERE name = %(name)s
