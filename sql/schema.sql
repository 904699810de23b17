-- The whole current pgqueue schema in one file: tables, columns, constraints, indexes, types,
-- triggers and storage settings, as `pgqueue migrate` leaves them after the last migration.
-- Read this instead of sql/migrations; every function is defined in sql/functions.
--
-- Documentation, and tested: tests/test_schema_sql.py builds one database with the migrations
-- and another from this file, and requires the same catalog in both. The other database is
-- built in one transaction: CREATE SCHEMA pgqueue, sql/functions/triggers.sql (the trigger on
-- `ready` below needs its function), this file, then every file of sql/functions. A schema
-- change is a new migration AND an edit of this file. Install and upgrade with `pgqueue migrate`,
-- not with this file: it records no migration, so pgqueue would refuse the database.
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

-- Ledgers of `pgqueue migrate` ------------------------------------------------------------

-- The migrations applied (this table is created by the migration runner itself).
CREATE TABLE pgqueue.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- The sha256 of the sql/functions files last applied; workers and clients refuse a database
-- whose functions differ from their own files.
CREATE TABLE pgqueue.schema_functions (
    -- a single row
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    sha256     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Tasks ----------------------------------------------------------------------------------

-- Task defaults known to the database, so that plain-SQL enqueues land on the task's queue
-- and compute the task's flow-control keys (the Python client computes them itself).
-- Limits enforced by the enqueue and payload functions (sql/functions/payload.sql); writable
-- only by the schema owner, so that a producer cannot lift them for its session.
CREATE TABLE pgqueue.settings (
    name  text PRIMARY KEY CHECK (name IN ('max_input_bytes', 'max_metadata_bytes', 'max_stream_chunk_bytes',
                                           'max_stream_chunks', 'max_state_bytes')),
    value bigint NOT NULL CHECK (value > 0)
);

COMMENT ON TABLE pgqueue.settings IS
    'Limits enforced by the enqueue and payload functions; writable only by the schema owner.';

CREATE TABLE pgqueue.tasks (
    name              text PRIMARY KEY,
    queue             text NOT NULL DEFAULT 'default',
    priority          smallint NOT NULL DEFAULT 0,
    schedule_to_start interval,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- the input field holding the concurrency key
    concurrency_key_field   text,
    -- the key is computed in Python: a plain-SQL enqueue must pass it
    concurrency_python_only boolean NOT NULL DEFAULT false,
    -- a list of {"limit": name, "key_field": field or null, "units": n,
    --            "units_field": field or null, "python_only": bool}
    rate_limits       jsonb,
    -- run-level deadline over all attempts, counted from the run's creation
    deadline          interval,
    -- debounce, singleton, throttle and batch rules (sql/functions/enqueue_control.sql); NULL: none
    control           jsonb
);

-- Runs -----------------------------------------------------------------------------------

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
    trace_context     jsonb,
    -- what the run costs in rate-limit units: [{"limit": name, "key": key, "units": n}, ...]
    rate_cost         jsonb,
    -- consecutive RetryLater requests (capped by the task's max_retry_later)
    retry_laters      integer NOT NULL DEFAULT 0,
    -- attempts cut off by an infrastructure failure (connection dropped, server restarted):
    -- not failures of the task's code, bounded like recoveries
    interruptions     integer NOT NULL DEFAULT 0,
    -- the run fails as DeadlineExceeded after this, whatever attempt it is at
    deadline_at       timestamptz,
    -- placement (sql/functions/placement.sql), set by the claim for placed runs only (worker_id
    -- is cleared when an attempt ends): the worker of its last attempt (sticky runs), and the
    -- version of the worker that started it (pinned runs)
    last_worker       uuid,
    started_version   text,
    -- a debounced, singleton or batched run's key, and a throttled run's key
    -- (sql/functions/enqueue_control.sql)
    control_key       text,
    throttle_key      text,
    -- of a batch item set aside for the batch another run leads: that run's id
    batch_id          bigint
) WITH (
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);

CREATE UNIQUE INDEX runs_idempotency_key ON pgqueue.runs (task, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- the rescuer looks for expired leases
CREATE INDEX runs_running_lease ON pgqueue.runs (lease_expires_at) WHERE status = 'running';
-- schedule-to-start deadlines of runs still waiting
CREATE INDEX runs_queued_expiry ON pgqueue.runs (expires_at)
    WHERE status = 'queued' AND expires_at IS NOT NULL;
-- suspended runs wake up by time
CREATE INDEX runs_deadline ON pgqueue.runs (deadline_at)
    WHERE deadline_at IS NOT NULL AND status IN ('queued', 'running', 'sleeping', 'waiting');
CREATE INDEX runs_suspended_until ON pgqueue.runs (run_at) WHERE status IN ('sleeping', 'waiting');
CREATE INDEX runs_failed_finished ON pgqueue.runs (finished_at) WHERE status IN ('failed', 'dead');
CREATE INDEX runs_task_id ON pgqueue.runs (task, id);
CREATE INDEX runs_parent ON pgqueue.runs (parent_id) WHERE parent_id IS NOT NULL;
-- running runs per (task, key): the count a limited claim compares with the limit
CREATE INDEX runs_running_key ON pgqueue.runs (task, concurrency_key, id)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;

-- The dashboard's run lists and charts. Each is partial or BRIN so the hot path pays little:
-- runs that succeed (the bulk) add no entry to the status index, runs without tags or metadata
-- add none to the GIN indexes, and only the final update of a run (finished_at set) adds one
-- to runs_finished_at.
-- lists of failed, cancelled and dead runs, newest first
CREATE INDEX runs_final_status_id ON pgqueue.runs (status, id) WHERE status IN ('failed', 'cancelled', 'dead');
-- throughput and latency of the last hour
CREATE INDEX runs_finished_at ON pgqueue.runs (finished_at) WHERE finished_at IS NOT NULL;
-- time-range filters: ids and creation times grow together, so a BRIN index (a few pages, nearly
-- free to maintain) narrows a range to the right blocks
CREATE INDEX runs_created_brin ON pgqueue.runs USING brin (created_at);
CREATE INDEX runs_tags ON pgqueue.runs USING gin (tags) WHERE tags <> '{}';
CREATE INDEX runs_metadata ON pgqueue.runs USING gin (metadata jsonb_path_ops) WHERE metadata <> '{}';
-- runs of one concurrency key, finished or not (runs_running_key only has running ones)
CREATE INDEX runs_concurrency_key_id ON pgqueue.runs (concurrency_key, id) WHERE concurrency_key IS NOT NULL;
-- Trees for retention: a root run (parent_id IS NULL) and every run below it (root_id = the
-- root's id, at any depth). Finished roots in finishing order: what the pruner reads first.
CREATE INDEX runs_root_finished ON pgqueue.runs (finished_at) WHERE parent_id IS NULL AND finished_at IS NOT NULL;
CREATE INDEX runs_root ON pgqueue.runs (root_id) WHERE root_id IS NOT NULL;
-- the active runs of a debounce or singleton key: what an enqueue of that key looks for
CREATE INDEX runs_control_active ON pgqueue.runs (task, control_key)
    WHERE control_key IS NOT NULL AND status IN ('queued', 'running', 'sleeping', 'waiting');
-- the items a batch's leader set aside (what its worker reads and finishes)
CREATE INDEX runs_batch ON pgqueue.runs (batch_id) WHERE batch_id IS NOT NULL;

-- The claimable runs: a row per queued run that is due or will be (enqueue, retry, wake-up and
-- rescue insert it; the claim deletes it).
CREATE TABLE pgqueue.ready (
    run_id          bigint PRIMARY KEY,
    queue           text NOT NULL,
    priority        smallint NOT NULL,
    run_at          timestamptz NOT NULL,
    task            text NOT NULL,
    concurrency_key text,
    -- a keyed run's place in the round-robin across keys (set by the trigger below; the claim
    -- order is described at the top of sql/functions/claim.sql)
    fair_seq        bigint,
    -- placement, set by the trigger ready_placement below from task_placement and the run; NULL
    -- `needs` means none (the run is claimed as if placement did not exist):
    -- labels a worker must have ('name=value', and '@version=V' for a pinned run), sorted
    needs           text[],
    -- labels the run prefers ('name=value', and '@worker=<id>' for a sticky run), until prefer_until
    prefers         text[],
    prefer_until    timestamptz,
    -- worker slots the run takes (NULL: 1)
    slots           integer
) WITH (
    fillfactor = 100,
    -- insert-then-delete churn: vacuum early and without throttling
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);

-- Two claim indexes, each exactly a claim order: unkeyed runs by age (higher priority first,
-- then earlier run_at, then older run), keyed runs in round-robin order. Placed runs are left
-- out: a worker never reads past runs it may not take.
CREATE INDEX ready_claim ON pgqueue.ready (queue, priority DESC, run_at, run_id)
    WHERE concurrency_key IS NULL AND needs IS NULL;
CREATE INDEX ready_claim_fair ON pgqueue.ready (queue, priority DESC, fair_seq, run_at, run_id)
    WHERE concurrency_key IS NOT NULL AND needs IS NULL;
-- placed runs, grouped by what a worker must have to take them (sql/functions/placement.sql)
CREATE INDEX ready_placed ON pgqueue.ready (queue, needs, priority DESC, run_at, run_id)
    WHERE needs IS NOT NULL;
-- the last queued run of a key (its next sequence number) and the queued runs of a key
CREATE INDEX ready_key ON pgqueue.ready (task, concurrency_key, fair_seq) WHERE concurrency_key IS NOT NULL;

-- A keyed run entering `ready` gets its place in the round-robin (sql/functions/triggers.sql).
-- Rows without a key skip the trigger: its WHEN is checked without calling the function.
CREATE TRIGGER ready_fair_seq BEFORE INSERT ON pgqueue.ready
    FOR EACH ROW WHEN (NEW.concurrency_key IS NOT NULL) EXECUTE FUNCTION pgqueue.ready_fair_seq();
-- A run entering `ready` gets its task's placement (sql/functions/triggers.sql).
CREATE TRIGGER ready_placement BEFORE INSERT ON pgqueue.ready
    FOR EACH ROW EXECUTE FUNCTION pgqueue.ready_placement();

-- The candidates a claim considers (pgqueue.claim keeps them in an array of this type).
CREATE TYPE pgqueue.claim_candidate AS (
    run_id          bigint,
    priority        smallint,
    run_at          timestamptz,
    task            text,
    concurrency_key text,
    fair_seq        bigint
);

-- Every try of a run: the audit trail.
CREATE TABLE pgqueue.attempts (
    run_id        bigint NOT NULL,
    attempt       integer NOT NULL,
    worker_id     uuid,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    outcome       text NOT NULL
        CHECK (outcome IN ('running', 'succeeded', 'failed', 'retry', 'timeout',
                           'crashed', 'cancelled', 'expired', 'handed_back', 'suspended',
                           'interrupted', 'heartbeat_timeout')),
    error_type    text,
    error_message text,
    traceback     text,
    -- what the task logged during this attempt (bounded by the worker)
    logs          text,
    PRIMARY KEY (run_id, attempt)
);

-- Checkpoints of durable runs.
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
    -- of a wait step: the event it took; the run's place in its mailbox of that (name, key)
    event_id    bigint,
    PRIMARY KEY (run_id, step_key)
);

-- Streamed output and progress of runs (sql/functions/streams.sql) ---------------------

-- One row per run that streamed or reported progress: the stream's length (the offset of its
-- next chunk, which also bounds the chunks a run may write) and the latest progress. The chunk
-- writer locks this row, so chunks of one run get gapless offsets in write order.
CREATE TABLE pgqueue.streams (
    run_id           bigint PRIMARY KEY,
    chunks           bigint NOT NULL DEFAULT 0,
    -- the attempt that wrote last (chunks or progress)
    attempt          integer NOT NULL,
    progress_done    double precision,
    progress_total   double precision,
    progress_message text,
    progress_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The chunks of a run's stream, in order: offsets 0, 1, 2, ... across all its attempts; each
-- chunk says which attempt wrote it (a retry appends after what earlier attempts wrote).
CREATE TABLE pgqueue.stream_chunks (
    run_id     bigint NOT NULL,
    "offset"   bigint NOT NULL,
    attempt    integer NOT NULL,
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, "offset")
);

-- Messages, published states, cancel on event (sql/functions/messages.sql) -------------

-- A run's mailbox: messages sent to it (`app.send`, `pgqueue.send_message`), taken by its
-- `ctx.receive(name)` in id order (send order: ids of one run are handed out under the run's
-- message lock), each once. Which ones a run took is in its steps (a receive step's output holds
-- the message id), so a replay takes the same messages again and a replay from the start gets
-- them all back. An update is a message whose sender waits for the run's reply.
CREATE TABLE pgqueue.messages (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      bigint NOT NULL,
    name        text NOT NULL,
    payload     jsonb NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    -- an update (`app.update`): its sender waits for the reply
    wants_reply boolean NOT NULL DEFAULT false,
    reply       jsonb,
    replied_at  timestamptz
);
CREATE INDEX messages_run_name ON pgqueue.messages (run_id, name, id);

-- A run suspended in `ctx.receive(name)`: a message of that name wakes it.
CREATE TABLE pgqueue.message_waits (
    run_id     bigint PRIMARY KEY,
    step_key   text NOT NULL,
    name       text NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    timeout_at timestamptz
);

-- The latest state a run published (`ctx.set_state`), read by queries without waking the run.
CREATE TABLE pgqueue.run_states (
    run_id     bigint PRIMARY KEY,
    state      jsonb NOT NULL,
    -- the attempt that wrote it
    attempt    integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Tasks whose unfinished runs are cancelled (with their children) when an event is sent whose
-- payload has the same value at `match` as the run's input (`@app.task(cancel_on=...)`);
-- `match` NULL: every unfinished run of the task.
CREATE TABLE pgqueue.cancel_subscriptions (
    event_name text NOT NULL,
    task       text NOT NULL,
    match      text,
    PRIMARY KEY (event_name, task)
);

-- Events ---------------------------------------------------------------------------------

CREATE TABLE pgqueue.events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    key        text NOT NULL DEFAULT '',
    payload    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_name_key ON pgqueue.events (name, key, created_at);
-- the next event after a run's place, in send order
CREATE INDEX events_name_key_id ON pgqueue.events (name, key, id);

-- old events first (retention)
CREATE INDEX events_created_at ON pgqueue.events (created_at);

-- Runs waiting for an event (a step of theirs is answered by it).
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

-- Tasks started by an event: each event NAME enqueues a run of TASK with the payload as input.
CREATE TABLE pgqueue.event_subscriptions (
    event_name text NOT NULL,
    task       text NOT NULL,
    PRIMARY KEY (event_name, task)
);

-- Cron -----------------------------------------------------------------------------------

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
    catch_up_limit integer CHECK (catch_up_limit >= 1),
    next_fire_at   timestamptz,
    last_fire_at   timestamptz,
    source         text NOT NULL DEFAULT 'code' CHECK (source IN ('code', 'runtime')),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cron_schedules_due ON pgqueue.cron_schedules (next_fire_at) WHERE enabled;

-- One row per fired tick: its primary key makes each tick fire once, whatever the number of
-- workers and restarts.
CREATE TABLE pgqueue.cron_ticks (
    schedule text NOT NULL,
    tick_at  timestamptz NOT NULL,
    run_id   bigint,
    PRIMARY KEY (schedule, tick_at)
);
-- ticks are deleted with the runs they started (retention)
CREATE INDEX cron_ticks_run ON pgqueue.cron_ticks (run_id) WHERE run_id IS NOT NULL;

-- Workers and queues ---------------------------------------------------------------------

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
    stopped_at   timestamptz,
    -- what it advertises for placement: 'name=value' labels, and its code version
    labels       text[] NOT NULL DEFAULT '{}',
    version      text
);

CREATE TABLE pgqueue.queues (
    name       text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Flow control ---------------------------------------------------------------------------

-- Limits per task (or workflow) and key: key '*' is the default for every key of that task,
-- a row with a concrete key (a tenant on a bigger plan) overrides it.
CREATE TABLE pgqueue.concurrency_limits (
    name        text NOT NULL,
    key         text NOT NULL DEFAULT '*',
    max_running integer NOT NULL CHECK (max_running > 0),
    strategy    text NOT NULL DEFAULT 'queue'
        CHECK (strategy IN ('queue', 'cancel_newest', 'cancel_oldest')),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- rows written from code are refreshed by workers at start; rows set at runtime (a tenant
    -- on a bigger plan) are marked 'runtime' and never overwritten by code
    source      text NOT NULL DEFAULT 'code' CHECK (source IN ('code', 'runtime')),
    PRIMARY KEY (name, key)
);

-- Placement (sql/functions/placement.sql) -----------------------------------------------

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

-- Token buckets. Key '' is the limit's definition (and the bucket of a limit without keys);
-- keyed buckets are created from it on first use. capacity is the burst.
CREATE TABLE pgqueue.rate_limits (
    name          text NOT NULL,
    key           text NOT NULL DEFAULT '',
    capacity      double precision NOT NULL CHECK (capacity > 0),
    refill_per_s  double precision NOT NULL CHECK (refill_per_s > 0),
    tokens        double precision NOT NULL,
    refilled_at   timestamptz NOT NULL DEFAULT now(),
    -- a fleet-wide hold (a provider answered 429 with Retry-After): no run needing it starts before
    held_until    timestamptz,
    -- as in concurrency_limits
    source        text NOT NULL DEFAULT 'code' CHECK (source IN ('code', 'runtime')),
    -- runs a claim moved to later because this bucket was short or on hold (for metrics)
    deferred_total bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (name, key),
    -- of a definition (key ''): the reported unit its buckets count (sql/functions/usage.sql)
    usage_unit    text
);

-- Usage reported by runs (sql/functions/usage.sql) ---------------------------------------

-- One row per unit of each report (ctx.report_usage), with the run's task and concurrency key
-- copied in; pruned with its run tree.
CREATE TABLE pgqueue.usage (
    run_id          bigint NOT NULL,
    attempt         integer NOT NULL,
    -- the step that reported it (NULL: reported outside a step)
    step_key        text,
    task            text NOT NULL,
    concurrency_key text,
    unit            text NOT NULL,
    amount          double precision NOT NULL CHECK (amount >= 0),
    reported_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_run ON pgqueue.usage (run_id, attempt);
CREATE INDEX usage_reported_at ON pgqueue.usage (reported_at);

-- All-time totals per task and unit, for the metrics' counters (never decreased by pruning).
CREATE TABLE pgqueue.usage_totals (
    task   text NOT NULL,
    unit   text NOT NULL,
    amount double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (task, unit)
);

-- The start times of a throttle key within its last period (at most `limit` of them): the claim
-- locks the row, so that claimers of one key count each other's starts.
CREATE TABLE pgqueue.throttle_windows (
    task   text NOT NULL,
    key    text NOT NULL,
    starts timestamptz[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (task, key)
);

-- Retention (sql/functions/retention.sql) ------------------------------------------------

-- How long finished runs are kept: per final status for every task (task '*'), optionally per
-- task. 'events' (task '*' only) is how long an event no run waits for is kept. Rows written from
-- code (`@app.task(retention=...)`, and the defaults below) are refreshed by workers; rows set at
-- runtime (CLI, SQL) are marked 'runtime' and never overwritten by code.
CREATE TABLE pgqueue.retention_policies (
    task       text NOT NULL DEFAULT '*',
    status     text NOT NULL CHECK (status IN ('succeeded', 'failed', 'cancelled', 'dead', 'events')),
    keep       interval NOT NULL CHECK (keep > interval '0'),
    source     text NOT NULL DEFAULT 'code' CHECK (source IN ('code', 'runtime')),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task, status),
    CHECK (status <> 'events' OR task = '*')
);
INSERT INTO pgqueue.retention_policies (task, status, keep) VALUES
    ('*', 'succeeded', interval '7 days'),
    ('*', 'failed', interval '30 days'),
    ('*', 'cancelled', interval '30 days'),
    ('*', 'dead', interval '30 days'),
    ('*', 'events', interval '7 days');

-- What pruning removed. A few slots, so that concurrent pruners each update a row of their own
-- (SKIP LOCKED) instead of queueing on one: the last prune is the newest row, totals the sum.
CREATE TABLE pgqueue.prune_stats (
    slot             smallint PRIMARY KEY,
    -- the last call, whatever it removed
    last_called_at   timestamptz,
    -- the last call that removed something, and what it removed
    last_pruned_at   timestamptz,
    last_trees       bigint NOT NULL DEFAULT 0,
    last_runs        bigint NOT NULL DEFAULT 0,
    last_events      bigint NOT NULL DEFAULT 0,
    total_trees      bigint NOT NULL DEFAULT 0,
    total_runs       bigint NOT NULL DEFAULT 0,
    total_events     bigint NOT NULL DEFAULT 0,
    -- the largest run id pruned: `runs show` of a missing id below it says it was pruned
    max_pruned_id    bigint
);
INSERT INTO pgqueue.prune_stats (slot) SELECT generate_series(0, 3);

-- Keyed sessions (sql/functions/sessions.sql, docs/sessions.md) ---------------------------

-- The sessions an application declared (`@app.session(name, key=field)`), written by workers.
CREATE TABLE pgqueue.sessions (
    name          text PRIMARY KEY,
    -- the input field holding the key (also the task's concurrency_key_field)
    key_field     text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (session, key): which invocation holds the key, and the key's durable state.
-- The row lock serialises the decisions of one key: admitting an invocation, handing the key to
-- the next one, saving the state.
CREATE TABLE pgqueue.session_keys (
    session     text NOT NULL,
    key         text NOT NULL,
    -- the invocation holding the key (running, retrying, sleeping or waiting); NULL: idle
    active_run  bigint,
    -- the state as of the last checkpoint
    state       jsonb NOT NULL DEFAULT '{}',
    -- the state when invocation base_run started: what each of its attempts replays from
    base_state  jsonb,
    base_run    bigint,
    -- invocations that held the key so far
    invocations bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session, key)
);

-- Invocations waiting for their key, in arrival order (seq is taken under the key's row lock).
-- Their runs are `queued` without a row in `ready`: no claim ever sees them.
CREATE TABLE pgqueue.session_inbox (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session text NOT NULL,
    key     text NOT NULL,
    run_id  bigint NOT NULL UNIQUE
);
CREATE INDEX session_inbox_key ON pgqueue.session_inbox (session, key, seq);

-- A keyed run entering `ready` is admitted only while it holds its session's key (else it waits
-- in the inbox). Named to fire before ready_fair_seq (triggers fire in name order), so that a
-- run parked in the inbox costs no round-robin bookkeeping. Unkeyed rows skip it.
CREATE TRIGGER ready_admit_session BEFORE INSERT ON pgqueue.ready
    FOR EACH ROW WHEN (NEW.concurrency_key IS NOT NULL) EXECUTE FUNCTION pgqueue.ready_admit_session();

-- A keyed run that becomes final hands its session's key to the next invocation. Checked on
-- the row without calling the function for unkeyed runs and for other status changes.
CREATE TRIGGER runs_session_finished AFTER UPDATE OF status ON pgqueue.runs
    FOR EACH ROW WHEN (NEW.concurrency_key IS NOT NULL
                       AND NEW.status IN ('succeeded', 'failed', 'cancelled', 'dead')
                       AND OLD.status IN ('queued', 'running', 'sleeping', 'waiting'))
    EXECUTE FUNCTION pgqueue.session_run_finished();
