-- Enqueue control (pgqueue/control.py, sql/functions/enqueue_control.sql).

-- name: register
-- A task's debounce, singleton and throttle rules, as declared in code (NULL: none).
UPDATE pgqueue.tasks SET control = %(control)s::jsonb, updated_at = now()
 WHERE name = %(task)s AND control IS DISTINCT FROM %(control)s::jsonb

-- name: list_tasks
-- The registered tasks with their defaults and rules (`pgqueue tasks`).
SELECT t.name, t.queue, t.priority, pgqueue.control_summary(t.control) AS control,
       t.concurrency_key_field, t.rate_limits IS NOT NULL AS rate_limited
  FROM pgqueue.tasks t
 ORDER BY t.name
