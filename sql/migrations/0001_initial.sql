-- pgqueue schema, version 1.
--
-- Two tables carry the hot path:
--   runs  - the durable record of every run (input, status, lease, result, error).
--   ready - only runs waiting to be claimed. A claim DELETEs from it, so the claim index
--           never fills with entries of runs that were already taken, however large the
--           history in `runs` grows.
-- Everything else (attempts, steps, events, cron, workers, limits) hangs off run ids.
-- No foreign keys point at `runs`: cascading deletes over millions of old rows make
-- retention and start-up slow; the code keeps the references consistent instead.

CREATE SCHEMA IF NOT EXISTS pgqueue;

-- Task defaults known to the database, so that plain-SQL enqueues land on the task's queue.
CREATE TABLE pgqueue.tasks (
    name              text PRIMARY KEY,
    queue             text NOT NULL DEFAULT 'default',
    priority          smallint NOT NULL DEFAULT 0,
    schedule_to_start interval,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgqueue.runs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task              text NOT NULL,
    queue             text NOT NULL,
    priority          smallint NOT NULL DEFAULT 0,
    status            text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'sleeping', 'waiting',
                          'succeeded', 'failed', 'cancelled', 'dead')),
    input             jsonb NOT NULL DEFAULT '{}',
    result            jsonb,
    error             jsonb,
    run_at            timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    -- schedule-to-start deadline: a run not started by then fails as expired
    expires_at        timestamptz,
    -- attempts started so far; also the fencing token of outcome writes
    attempt           integer NOT NULL DEFAULT 0,
    attempt_started_at timestamptz,
    -- attempts that failed in the task's code (exception or timeout); retries are decided
    -- on this, so retry-after requests and crash recoveries do not use up attempts
    failures          integer NOT NULL DEFAULT 0,
    -- times the run was rescued from a dead worker (not counted as failures)
    recoveries        integer NOT NULL DEFAULT 0,
    worker_id         uuid,
    lease_expires_at  timestamptz,
    cancel_requested  boolean NOT NULL DEFAULT false,
    idempotency_key   text,
    concurrency_key   text,
    tags              text[] NOT NULL DEFAULT '{}',
    metadata          jsonb NOT NULL DEFAULT '{}',
    parent_id         bigint,
    root_id           bigint,
    -- children spawned by this run, and how many of them have not finished yet
    children_total    integer NOT NULL DEFAULT 0,
    children_pending  integer NOT NULL DEFAULT 0,
    -- a waiting workflow run wakes whenever one of its children finishes, not only the last
    wake_on_each_child boolean NOT NULL DEFAULT false,
    workflow_node     text,
    trace_context     jsonb
) WITH (fillfactor = 90);

CREATE UNIQUE INDEX runs_idempotency_key ON pgqueue.runs (task, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- the rescuer looks for expired leases
CREATE INDEX runs_running_lease ON pgqueue.runs (lease_expires_at) WHERE status = 'running';
-- schedule-to-start deadlines of runs still waiting
CREATE INDEX runs_queued_expiry ON pgqueue.runs (expires_at)
    WHERE status = 'queued' AND expires_at IS NOT NULL;
-- suspended runs wake up by time
CREATE INDEX runs_suspended_until ON pgqueue.runs (run_at) WHERE status IN ('sleeping', 'waiting');
CREATE INDEX runs_failed_finished ON pgqueue.runs (finished_at) WHERE status IN ('failed', 'dead');
CREATE INDEX runs_task_id ON pgqueue.runs (task, id);
CREATE INDEX runs_parent ON pgqueue.runs (parent_id) WHERE parent_id IS NOT NULL;

ALTER TABLE pgqueue.runs SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);

CREATE TABLE pgqueue.ready (
    run_id          bigint PRIMARY KEY,
    queue           text NOT NULL,
    priority        smallint NOT NULL,
    run_at          timestamptz NOT NULL,
    task            text NOT NULL,
    concurrency_key text
) WITH (
    fillfactor = 100,
    -- insert-then-delete churn: vacuum early and without throttling
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);

-- exactly the claim order: higher priority first, then earlier run_at, then older run
CREATE INDEX ready_claim ON pgqueue.ready (queue, priority DESC, run_at, run_id);

CREATE TABLE pgqueue.attempts (
    run_id        bigint NOT NULL,
    attempt       integer NOT NULL,
    worker_id     uuid,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    outcome       text NOT NULL
        CHECK (outcome IN ('running', 'succeeded', 'failed', 'retry', 'timeout',
                           'crashed', 'cancelled', 'expired', 'handed_back', 'suspended')),
    error_type    text,
    error_message text,
    traceback     text,
    -- what the task logged during this attempt (bounded by the worker)
    logs          text,
    PRIMARY KEY (run_id, attempt)
);

CREATE TABLE pgqueue.steps (
    run_id      bigint NOT NULL,
    step_key    text NOT NULL,          -- name#sequence, unique within the run
    seq         integer NOT NULL,
    name        text NOT NULL,
    -- sleeping: a durable sleep not over yet (output holds wake_at)
    status      text NOT NULL CHECK (status IN ('succeeded', 'failed', 'sleeping')),
    output      jsonb,
    error       jsonb,
    attempts    integer NOT NULL DEFAULT 1,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (run_id, step_key)
);

CREATE TABLE pgqueue.events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    key        text NOT NULL DEFAULT '',
    payload    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_name_key ON pgqueue.events (name, key, created_at);

CREATE TABLE pgqueue.event_waits (
    run_id     bigint NOT NULL,
    step_key   text NOT NULL,
    seq        integer NOT NULL,
    event_name text NOT NULL,
    event_key  text NOT NULL DEFAULT '',
    since      timestamptz NOT NULL DEFAULT now(),
    timeout_at timestamptz,
    PRIMARY KEY (run_id, step_key)
);
CREATE INDEX event_waits_event ON pgqueue.event_waits (event_name, event_key);

CREATE TABLE pgqueue.cron_schedules (
    name           text PRIMARY KEY,
    expression     text NOT NULL,
    timezone       text NOT NULL DEFAULT 'UTC',
    task           text NOT NULL,
    input          jsonb NOT NULL DEFAULT '{}',
    queue          text,
    priority       smallint,
    enabled        boolean NOT NULL DEFAULT true,
    misfire_policy text NOT NULL DEFAULT 'run_once'
        CHECK (misfire_policy IN ('skip', 'run_once', 'catch_up')),
    catch_up_limit integer,
    next_fire_at   timestamptz,
    last_fire_at   timestamptz,
    source         text NOT NULL DEFAULT 'code' CHECK (source IN ('code', 'runtime')),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cron_schedules_due ON pgqueue.cron_schedules (next_fire_at) WHERE enabled;

CREATE TABLE pgqueue.cron_ticks (
    schedule text NOT NULL,
    tick_at  timestamptz NOT NULL,
    run_id   bigint,
    PRIMARY KEY (schedule, tick_at)
);

CREATE TABLE pgqueue.workers (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    host         text NOT NULL,
    pid          integer NOT NULL,
    queues       text[] NOT NULL,
    concurrency  integer NOT NULL,
    lease_s      double precision NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz
);

-- Tasks started by an event: each event NAME enqueues a run of TASK with the payload as input.
CREATE TABLE pgqueue.event_subscriptions (
    event_name text NOT NULL,
    task       text NOT NULL,
    PRIMARY KEY (event_name, task)
);

CREATE TABLE pgqueue.queues (
    name       text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Limits per task (or workflow) and key: key '*' is the default for every key of that task,
-- a row with a concrete key (a tenant on a bigger plan) overrides it.
CREATE TABLE pgqueue.concurrency_limits (
    name        text NOT NULL,
    key         text NOT NULL DEFAULT '*',
    max_running integer NOT NULL CHECK (max_running > 0),
    strategy    text NOT NULL DEFAULT 'queue'
        CHECK (strategy IN ('queue', 'cancel_newest', 'cancel_oldest')),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, key)
);
-- running runs per concurrency key: the count a limited claim compares with the limit
CREATE INDEX runs_running_key ON pgqueue.runs (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;

CREATE TABLE pgqueue.rate_limits (
    name          text NOT NULL,
    key           text NOT NULL DEFAULT '',
    capacity      double precision NOT NULL CHECK (capacity > 0),
    refill_per_s  double precision NOT NULL CHECK (refill_per_s > 0),
    tokens        double precision NOT NULL,
    refilled_at   timestamptz NOT NULL DEFAULT now(),
    held_until    timestamptz,
    PRIMARY KEY (name, key)
);
