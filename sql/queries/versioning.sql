-- Versioning of in-flight durable runs (pgqueue/versioning.py).

-- name: waits_reach
-- Whether the run registered an event wait at place SEQ of its step sequence or later: it had
-- reached that place before (a wait's step is recorded only once its event came).
SELECT EXISTS (SELECT 1 FROM pgqueue.event_waits w WHERE w.run_id = %(run)s AND w.seq >= %(seq)s)
