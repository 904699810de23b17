-- Placement of runs on workers (pgqueue/placement.py, sql/functions/placement.sql).

-- name: register
-- A task's placement from code (a worker at start); unchanged rows are not rewritten.
INSERT INTO pgqueue.task_placement AS p (task, required_labels, preferred_labels, prefer_wait, slots, sticky,
                                         pin_version)
VALUES (%(task)s, %(required)s::text[], %(preferred)s::text[], make_interval(secs => %(wait)s), %(slots)s,
        %(sticky)s, %(pin)s)
ON CONFLICT (task) DO UPDATE
   SET required_labels = excluded.required_labels, preferred_labels = excluded.preferred_labels,
       prefer_wait = excluded.prefer_wait, slots = excluded.slots, sticky = excluded.sticky,
       pin_version = excluded.pin_version, updated_at = now()
 WHERE (p.required_labels, p.preferred_labels, p.prefer_wait, p.slots, p.sticky, p.pin_version)
       IS DISTINCT FROM (excluded.required_labels, excluded.preferred_labels, excluded.prefer_wait, excluded.slots,
                         excluded.sticky, excluded.pin_version)

-- name: forget
-- Tasks of this app that declare no placement (any more).
DELETE FROM pgqueue.task_placement WHERE task = ANY (%(tasks)s::text[])

-- name: worker_labels
-- What a worker advertises (the claim gets its labels with each call; this is for people and for
-- the trigger's question whether a preferred worker is alive).
UPDATE pgqueue.workers SET labels = %(labels)s::text[], version = %(version)s WHERE id = %(id)s
