-- Queries about tasks: what workers register so that plain-SQL enqueues know a task's defaults.

-- name: register
INSERT INTO pgqueue.tasks (name, queue, priority, schedule_to_start, deadline)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE
   SET queue = excluded.queue, priority = excluded.priority,
       schedule_to_start = excluded.schedule_to_start, deadline = excluded.deadline, updated_at = now()
 WHERE (tasks.queue, tasks.priority, tasks.schedule_to_start, tasks.deadline)
       IS DISTINCT FROM (excluded.queue, excluded.priority, excluded.schedule_to_start, excluded.deadline)
