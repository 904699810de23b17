-- pgqueue schema, version 14: placement of runs on workers (worker labels, required and
-- preferred labels, slot cost, sticky runs, version pinning). The claim's part is in
-- sql/functions/placement.sql; the trigger function that fills a ready row's placement is in
-- sql/functions/triggers.sql.

-- What a task declared about where its runs go (written by workers at start, like pgqueue.tasks);
-- a task without a row has no placement, and its ready rows carry none.
CREATE TABLE pgqueue.task_placement (
    task             text PRIMARY KEY,
    -- 'name=value' entries, sorted: a worker must have all of them
    required_labels  text[] NOT NULL DEFAULT '{}',
    -- 'name=value' entries, sorted: a worker with all of them takes the run first
    preferred_labels text[] NOT NULL DEFAULT '{}',
    -- how long a preferred or sticky run waits for its preferred worker before any worker takes it
    prefer_wait      interval NOT NULL DEFAULT '2 seconds' CHECK (prefer_wait >= interval '0'),
    -- the worker slots one run takes
    slots            integer NOT NULL DEFAULT 1 CHECK (slots BETWEEN 1 AND 10000),
    -- later attempts and wake-ups prefer the worker of the run's last attempt
    sticky           boolean NOT NULL DEFAULT false,
    -- once started, only workers of the version that started it take the run again
    pin_version      boolean NOT NULL DEFAULT false,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Placement of a ready row, set by the trigger below from task_placement and the run. A row
-- with `needs` NULL has no placement (and is claimed exactly as before); the others are found
-- by their own index, grouped by what a worker must have to take them.
ALTER TABLE pgqueue.ready
    -- labels a worker must have ('name=value', and '@version=V' for a pinned run), sorted
    ADD COLUMN needs        text[],
    -- labels the run prefers ('name=value', and '@worker=<id>' for a sticky run), until prefer_until
    ADD COLUMN prefers      text[],
    ADD COLUMN prefer_until timestamptz,
    -- worker slots the run takes (NULL: 1)
    ADD COLUMN slots        integer;

-- the worker of a placed run's last attempt, and the version of the worker of its first
-- (set by the claim for placed runs only; runs.worker_id is cleared when an attempt ends)
ALTER TABLE pgqueue.runs
    ADD COLUMN last_worker     uuid,
    ADD COLUMN started_version text;

-- what workers advertise (pgqueue worker --label, --version)
ALTER TABLE pgqueue.workers
    ADD COLUMN labels  text[] NOT NULL DEFAULT '{}',
    ADD COLUMN version text;

-- The claim indexes of runs without placement leave placed runs out, so that a worker never
-- reads past runs it may not take; placed runs have their own, by queue and needs first.
DROP INDEX pgqueue.ready_claim;
DROP INDEX pgqueue.ready_claim_fair;
CREATE INDEX ready_claim ON pgqueue.ready (queue, priority DESC, run_at, run_id)
    WHERE concurrency_key IS NULL AND needs IS NULL;
CREATE INDEX ready_claim_fair ON pgqueue.ready (queue, priority DESC, fair_seq, run_at, run_id)
    WHERE concurrency_key IS NOT NULL AND needs IS NULL;
CREATE INDEX ready_placed ON pgqueue.ready (queue, needs, priority DESC, run_at, run_id)
    WHERE needs IS NOT NULL;

CREATE TRIGGER ready_placement BEFORE INSERT ON pgqueue.ready
    FOR EACH ROW EXECUTE FUNCTION pgqueue.ready_placement();

-- the claim takes the worker's labels
DROP FUNCTION IF EXISTS pgqueue.claim(uuid, text[], integer, double precision);
