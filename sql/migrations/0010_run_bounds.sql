-- pgqueue schema: bounds on a run besides its failures.
--
-- retry_laters: consecutive RetryLater/RateLimited requests of the run (capped per task);
-- interruptions: attempts cut off by an infrastructure failure (the database connection
-- dropped, the server restarted) rather than by the task's code: retried without using up
-- the task's attempts, bounded like crash recoveries;
-- deadline_at: the run's deadline over all attempts (the task's `deadline`, from creation).
ALTER TABLE pgqueue.runs
    ADD COLUMN retry_laters  integer NOT NULL DEFAULT 0,
    ADD COLUMN interruptions integer NOT NULL DEFAULT 0,
    ADD COLUMN deadline_at   timestamptz;

-- the expirer's scan: unfinished runs with a deadline
CREATE INDEX runs_deadline ON pgqueue.runs (deadline_at)
    WHERE deadline_at IS NOT NULL AND status IN ('queued', 'running', 'sleeping', 'waiting');

-- a task's run-level deadline, registered by workers so that plain-SQL enqueues apply it too
ALTER TABLE pgqueue.tasks ADD COLUMN deadline interval;

-- an attempt cut off by an infrastructure failure, and one failed for its heartbeat's silence
ALTER TABLE pgqueue.attempts DROP CONSTRAINT attempts_outcome_check;
ALTER TABLE pgqueue.attempts ADD CONSTRAINT attempts_outcome_check
    CHECK (outcome IN ('running', 'succeeded', 'failed', 'retry', 'timeout', 'crashed', 'cancelled',
                       'expired', 'handed_back', 'suspended', 'interrupted', 'heartbeat_timeout'));

-- the enqueue functions take a run's `deadline` (sql/functions/enqueue.sql re-creates them)
DROP FUNCTION IF EXISTS pgqueue.enqueue_many(text, jsonb[], text, integer, timestamptz, interval, text[], text[],
                                             jsonb, interval, bigint, text[], jsonb[], jsonb);
DROP FUNCTION IF EXISTS pgqueue.enqueue_one(text, jsonb, text, integer, timestamptz, interval, text, text[], jsonb,
                                            interval, text, jsonb, jsonb);
DROP FUNCTION IF EXISTS pgqueue.enqueue(text, jsonb, text, integer, timestamptz, interval, text, text[], jsonb,
                                        interval, text, jsonb, jsonb);
