-- Putting work on the queue: the public SQL API. The Python client calls these same
-- functions, so a run enqueued from psql, a trigger or another language is the same run.
-- Inputs are checked by payload.sql's functions; a keyed run gets its place in the
-- round-robin from the trigger function in triggers.sql.

-- Checks the options every enqueue shares and fills in the task's registered defaults.
-- The queue of a run is the one the enqueue names, else the one its task's workers registered:
-- an enqueue that names no queue for a task no worker registered is refused (PQ005), so that a
-- typo fails at once and a run never lands in a queue that depends on whether a worker had
-- started yet. Naming the queue is the way to enqueue a task before its workers register it.
-- Callers that name the queue and priority (the Python client for its own tasks) skip the lookup.
CREATE OR REPLACE FUNCTION pgqueue.enqueue_settings(
    task text, INOUT queue text, INOUT priority integer, INOUT schedule_to_start interval)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    t pgqueue.tasks;
BEGIN
    IF enqueue_settings.task IS NULL OR enqueue_settings.task = '' THEN
        RAISE EXCEPTION 'pgqueue: task name is empty' USING ERRCODE = 'PQ002',
            HINT = 'Pass the name the task was declared with, e.g. pgqueue.enqueue(''summarize'', ''{}'').';
    END IF;
    IF enqueue_settings.queue IS NULL OR enqueue_settings.priority IS NULL THEN
        SELECT * INTO t FROM pgqueue.tasks WHERE name = enqueue_settings.task;
        IF NOT FOUND AND enqueue_settings.queue IS NULL THEN
            PERFORM pgqueue.check_name('task', enqueue_settings.task);  -- a malformed name says so first
            RAISE EXCEPTION 'pgqueue: unknown task "%": no worker has registered it', enqueue_settings.task
                USING ERRCODE = 'PQ005',
                HINT = 'Check the name, or start a worker of the app that declares it (workers register their '
                       'tasks and queues), or name its queue to enqueue it before that: queue => ''default'' '
                       '(queue= in Python, --queue in the CLI).';
        END IF;
        queue := coalesce(enqueue_settings.queue, t.queue);
        priority := coalesce(enqueue_settings.priority, t.priority, 0);
        schedule_to_start := coalesce(enqueue_settings.schedule_to_start, t.schedule_to_start);
    END IF;
    IF enqueue_settings.priority NOT BETWEEN -32768 AND 32767 THEN
        RAISE EXCEPTION 'pgqueue: priority % is out of range', enqueue_settings.priority USING ERRCODE = 'PQ002',
            HINT = 'Use a priority between -32768 and 32767; higher runs first.';
    END IF;
END
$$;


-- The keys a plain-SQL enqueue did not pass, from what the task's workers registered.
CREATE OR REPLACE FUNCTION pgqueue.flow_keys(task text, input jsonb, INOUT concurrency_key text, INOUT rate_cost jsonb)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    t pgqueue.tasks;
BEGIN
    SELECT * INTO t FROM pgqueue.tasks WHERE name = flow_keys.task;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF flow_keys.concurrency_key IS NULL AND (t.concurrency_key_field IS NOT NULL OR t.concurrency_python_only) THEN
        IF t.concurrency_python_only THEN
            RAISE EXCEPTION 'pgqueue: task "%" computes its concurrency key in Python', flow_keys.task
                USING ERRCODE = 'PQ002', HINT = 'Pass it: pgqueue.enqueue(..., concurrency_key => ''tenant-1'').';
        END IF;
        concurrency_key := input ->> t.concurrency_key_field;
        IF concurrency_key IS NULL THEN
            RAISE EXCEPTION 'pgqueue: the input of task "%" has no field "%" (its concurrency key)',
                flow_keys.task, t.concurrency_key_field USING ERRCODE = 'PQ002',
                HINT = 'Add the field to the input, or pass concurrency_key => ''...''.';
        END IF;
    END IF;
    IF flow_keys.rate_cost IS NULL AND t.rate_limits IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM jsonb_array_elements(t.rate_limits) s WHERE (s ->> 'python_only')::boolean) THEN
            RAISE EXCEPTION 'pgqueue: task "%" computes its rate-limit units or keys in Python', flow_keys.task
                USING ERRCODE = 'PQ002',
                HINT = 'Pass them: rate_cost => ''[{"limit": "openai", "key": "", "units": 1}]''.';
        END IF;
        SELECT jsonb_agg(jsonb_build_object(
                   'limit', s ->> 'limit',
                   'key', coalesce(input ->> (s ->> 'key_field'), ''),
                   'units', coalesce((input ->> (s ->> 'units_field'))::float8, (s ->> 'units')::float8)))
          INTO rate_cost
          FROM jsonb_array_elements(t.rate_limits) s;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pgqueue.enqueue_many(
    task              text,
    inputs            jsonb[],
    queue             text DEFAULT NULL,
    priority          integer DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,
    delay             interval DEFAULT NULL,
    idempotency_keys  text[] DEFAULT NULL,
    tags              text[] DEFAULT '{}',
    metadata          jsonb DEFAULT '{}',
    schedule_to_start interval DEFAULT NULL,
    parent_id         bigint DEFAULT NULL,
    concurrency_keys  text[] DEFAULT NULL,
    rate_costs        jsonb[] DEFAULT NULL,
    trace_context     jsonb DEFAULT NULL,
    -- the run's deadline over all its attempts, from now (NULL: the task's registered deadline)
    deadline          interval DEFAULT NULL
) RETURNS TABLE (id bigint, created boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_limit    bigint := pgqueue.max_input_bytes();
    v_queue    text;
    v_priority integer;
    v_s2s      interval;
    v_run_at   timestamptz := coalesce(enqueue_many.run_at, now()) + coalesce(enqueue_many.delay, '0');
    v_bad      record;
    v_new      bigint[];
    v_root     bigint;
    v_keys     text[] := enqueue_many.concurrency_keys;
    v_costs    jsonb[] := enqueue_many.rate_costs;
    v_flow     boolean;
    v_deadline timestamptz;
    v_control  jsonb;
BEGIN
    SELECT * INTO v_queue, v_priority, v_s2s
      FROM pgqueue.enqueue_settings(enqueue_many.task, enqueue_many.queue, enqueue_many.priority,
                                    enqueue_many.schedule_to_start);
    IF NOT (pgqueue.name_ok(enqueue_many.task) AND pgqueue.name_ok(v_queue)) THEN
        PERFORM pgqueue.check_name('task', enqueue_many.task), pgqueue.check_name('queue', v_queue);
    END IF;
    PERFORM pgqueue.check_options(enqueue_many.metadata, enqueue_many.trace_context, enqueue_many.tags,
                                  enqueue_many.rate_costs);
    IF idempotency_keys IS NOT NULL
       AND cardinality(idempotency_keys) <> cardinality(inputs) THEN
        RAISE EXCEPTION 'pgqueue: % idempotency keys for % inputs',
            cardinality(idempotency_keys), cardinality(inputs) USING ERRCODE = 'PQ002',
            HINT = 'Give one key per input, or none.';
    END IF;
    IF (v_keys IS NOT NULL AND cardinality(v_keys) <> cardinality(inputs))
       OR (v_costs IS NOT NULL AND cardinality(v_costs) <> cardinality(inputs)) THEN
        RAISE EXCEPTION 'pgqueue: concurrency keys or rate costs do not match the % inputs', cardinality(inputs)
            USING ERRCODE = 'PQ002', HINT = 'Give one per input, or none.';
    END IF;
    IF enqueue_many.parent_id IS NOT NULL THEN
        SELECT coalesce(r.root_id, r.id) INTO v_root FROM pgqueue.runs r WHERE r.id = enqueue_many.parent_id;
    END IF;
    -- one pass over the inputs finds the first bad one
    SELECT u.doc, u.ord - 1 AS idx INTO v_bad
      FROM unnest(inputs) WITH ORDINALITY AS u(doc, ord)
     WHERE NOT pgqueue.input_ok(u.doc, v_limit)
     LIMIT 1;
    IF FOUND THEN
        PERFORM pgqueue.reject_input(enqueue_many.task, v_bad.doc, v_bad.idx, v_limit);
    END IF;
    -- keys the caller left out come from the task's registration
    -- and so does the run-level deadline, counted from now, unless the caller gave one
    SELECT t.concurrency_key_field IS NOT NULL OR t.concurrency_python_only OR t.rate_limits IS NOT NULL,
           now() + coalesce(enqueue_many.deadline, t.deadline), t.control
      INTO v_flow, v_deadline, v_control FROM pgqueue.tasks t WHERE t.name = enqueue_many.task;
    IF NOT FOUND THEN
        v_deadline := now() + enqueue_many.deadline;  -- a task nobody registered
    END IF;
    IF v_control IS NOT NULL THEN
        -- debounce, singleton, throttle: input by input (enqueue_control.sql)
        RETURN QUERY SELECT * FROM pgqueue.control_enqueue_many(
            enqueue_many.task, inputs, v_control, enqueue_many.queue, enqueue_many.priority, enqueue_many.run_at,
            enqueue_many.delay, idempotency_keys, enqueue_many.tags, enqueue_many.metadata,
            enqueue_many.schedule_to_start, enqueue_many.parent_id, v_keys, v_costs, enqueue_many.trace_context,
            enqueue_many.deadline);
        RETURN;
    END IF;
    IF v_flow AND (v_keys IS NULL OR v_costs IS NULL) THEN
        SELECT array_agg(f.concurrency_key ORDER BY u.ord), array_agg(f.rate_cost ORDER BY u.ord)
          INTO v_keys, v_costs
          FROM unnest(inputs) WITH ORDINALITY AS u(doc, ord)
         CROSS JOIN LATERAL pgqueue.flow_keys(enqueue_many.task, u.doc, v_keys[u.ord], v_costs[u.ord]) f;
    END IF;
    IF v_costs IS NOT NULL THEN
        -- a run needing more units than a bucket's burst could never start: refused (usage.sql)
        PERFORM pgqueue.check_rate_costs(enqueue_many.task, v_costs);
    END IF;

    IF idempotency_keys IS NULL THEN
        RETURN QUERY
        WITH ins AS (
            INSERT INTO pgqueue.runs (task, queue, priority, input, run_at, expires_at, tags, metadata,
                                      parent_id, root_id, concurrency_key, rate_cost, trace_context, deadline_at)
            SELECT enqueue_many.task, v_queue, v_priority, u.doc, v_run_at, v_run_at + v_s2s,
                   coalesce(enqueue_many.tags, '{}'), coalesce(enqueue_many.metadata, '{}'),
                   enqueue_many.parent_id, v_root, v_keys[u.ord], v_costs[u.ord], enqueue_many.trace_context,
                   v_deadline
              FROM unnest(inputs) WITH ORDINALITY AS u(doc, ord)
             ORDER BY u.ord
            RETURNING id, concurrency_key
        ), rdy AS (
            INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
            SELECT ins.id, v_queue, v_priority, v_run_at, enqueue_many.task, ins.concurrency_key
              FROM ins ORDER BY ins.id
        )
        SELECT ins.id, true FROM ins ORDER BY ins.id;
    ELSE
        WITH ins AS (
            INSERT INTO pgqueue.runs (task, queue, priority, input, run_at, expires_at,
                                      idempotency_key, tags, metadata, parent_id, root_id,
                                      concurrency_key, rate_cost, trace_context, deadline_at)
            SELECT enqueue_many.task, v_queue, v_priority, u.doc, v_run_at, v_run_at + v_s2s,
                   u.key, coalesce(enqueue_many.tags, '{}'), coalesce(enqueue_many.metadata, '{}'),
                   enqueue_many.parent_id, v_root, v_keys[u.ord], v_costs[u.ord], enqueue_many.trace_context,
                   v_deadline
              FROM unnest(inputs, idempotency_keys) WITH ORDINALITY AS u(doc, key, ord)
             ORDER BY u.ord
            ON CONFLICT (task, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id, concurrency_key
        ), rdy AS (
            INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
            SELECT ins.id, v_queue, v_priority, v_run_at, enqueue_many.task, ins.concurrency_key
              FROM ins ORDER BY ins.id
        )
        SELECT coalesce(array_agg(ins.id), '{}') INTO v_new FROM ins;

        -- A separate statement, so that runs committed by a concurrent enqueue with the
        -- same key (which ON CONFLICT waited for) are visible here. A key repeated within
        -- the batch counts as created only at its first position.
        RETURN QUERY
        SELECT r.id, r.id = ANY (v_new) AND u.ord = min(u.ord) OVER (PARTITION BY u.key)
          FROM unnest(idempotency_keys) WITH ORDINALITY AS u(key, ord)
          JOIN pgqueue.runs r ON r.task = enqueue_many.task AND r.idempotency_key = u.key
         ORDER BY u.ord;
    END IF;

    IF v_run_at <= now() THEN
        -- one wake-up per statement, never per row
        PERFORM pg_notify('pgqueue_ready', v_queue);
    END IF;
END
$$;

COMMENT ON FUNCTION pgqueue.enqueue_many IS
    'Enqueue one run of TASK per element of INPUTS; returns (id, created) in input order.';


-- One run: the same rules as enqueue_many, without the array machinery (the common case
-- of an application enqueueing as it goes). Returns the run id and whether it was created
CREATE OR REPLACE FUNCTION pgqueue.enqueue_one(
    task              text,
    input             jsonb DEFAULT '{}',
    queue             text DEFAULT NULL,
    priority          integer DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,
    delay             interval DEFAULT NULL,
    idempotency_key   text DEFAULT NULL,
    tags              text[] DEFAULT '{}',
    metadata          jsonb DEFAULT '{}',
    schedule_to_start interval DEFAULT NULL,
    concurrency_key   text DEFAULT NULL,
    rate_cost         jsonb DEFAULT NULL,
    trace_context     jsonb DEFAULT NULL,
    deadline          interval DEFAULT NULL,
    OUT id            bigint,
    OUT created       boolean
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_limit    bigint := pgqueue.max_input_bytes();
    v_queue    text := enqueue_one.queue;
    v_priority integer := enqueue_one.priority;
    v_s2s      interval := enqueue_one.schedule_to_start;
    v_run_at   timestamptz := coalesce(enqueue_one.run_at, now()) + coalesce(enqueue_one.delay, '0');
    v_key      text := enqueue_one.concurrency_key;
    v_cost     jsonb := enqueue_one.rate_cost;
    v_flow     boolean;
    v_control  jsonb;
    v_ckey     text;
    v_tkey     text;
BEGIN
    IF v_queue IS NULL OR v_priority IS NULL OR enqueue_one.task IS NULL OR enqueue_one.task = ''
       OR v_priority NOT BETWEEN -32768 AND 32767 THEN
        SELECT * INTO v_queue, v_priority, v_s2s
          FROM pgqueue.enqueue_settings(enqueue_one.task, v_queue, v_priority, v_s2s);
    END IF;
    -- the checks cost a few microseconds when all is well: name_ok and the emptiness tests are
    -- plain expressions; the functions that raise the errors run only when one fails
    IF NOT (pgqueue.name_ok(enqueue_one.task) AND pgqueue.name_ok(v_queue)) THEN
        PERFORM pgqueue.check_name('task', enqueue_one.task), pgqueue.check_name('queue', v_queue);
    END IF;
    IF enqueue_one.metadata <> '{}' OR enqueue_one.trace_context IS NOT NULL OR enqueue_one.rate_cost IS NOT NULL
       OR cardinality(enqueue_one.tags) > 0 THEN
        PERFORM pgqueue.check_options(enqueue_one.metadata, enqueue_one.trace_context, enqueue_one.tags,
                                      ARRAY[enqueue_one.rate_cost]);
    END IF;
    IF NOT pgqueue.input_ok(enqueue_one.input, v_limit) THEN
        PERFORM pgqueue.reject_input(enqueue_one.task, enqueue_one.input, 0, v_limit);
    END IF;
    -- most tasks have no flow-control or enqueue-control rule: a look at the registration is
    -- cheaper than calling flow_keys, which would find nothing to compute (benchmarks/enqueue.py)
    SELECT t.concurrency_key_field IS NOT NULL OR t.concurrency_python_only OR t.rate_limits IS NOT NULL,
           t.control
      INTO v_flow, v_control FROM pgqueue.tasks t WHERE t.name = enqueue_one.task;
    IF v_flow AND (v_key IS NULL OR v_cost IS NULL) THEN
        SELECT * INTO v_key, v_cost FROM pgqueue.flow_keys(enqueue_one.task, enqueue_one.input, v_key, v_cost);
    END IF;
    IF v_cost IS NOT NULL THEN
        -- a run needing more units than a bucket's burst could never start: refused (usage.sql)
        PERFORM pgqueue.check_rate_costs(enqueue_one.task, ARRAY[v_cost]);
    END IF;
    IF v_control IS NOT NULL THEN
        -- debounce, singleton, throttle (enqueue_control.sql): an existing run may answer instead
        SELECT c.run_at, c.existing, c.control_key, c.throttle_key INTO v_run_at, id, v_ckey, v_tkey
          FROM pgqueue.control_enqueue(enqueue_one.task, enqueue_one.input, v_control, v_run_at) AS c;
        IF id IS NOT NULL THEN
            created := false;
            RETURN;
        END IF;
    END IF;
    INSERT INTO pgqueue.runs (task, queue, priority, input, run_at, expires_at, idempotency_key, tags, metadata,
                              concurrency_key, rate_cost, trace_context, deadline_at, control_key, throttle_key)
    VALUES (enqueue_one.task, v_queue, v_priority, enqueue_one.input, v_run_at, v_run_at + v_s2s,
            enqueue_one.idempotency_key, coalesce(enqueue_one.tags, '{}'), coalesce(enqueue_one.metadata, '{}'),
            v_key, v_cost, enqueue_one.trace_context,
            -- the run-level deadline, counted from now: the caller's, else the task's (coalesce
            -- evaluates the lookup only when the caller gave none)
            coalesce(now() + enqueue_one.deadline,
                     now() + (SELECT t.deadline FROM pgqueue.tasks t WHERE t.name = enqueue_one.task)),
            v_ckey, v_tkey)
    ON CONFLICT (task, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING runs.id INTO id;
    IF id IS NULL THEN
        -- a new statement: sees a run committed by a concurrent enqueue that ON CONFLICT waited for
        SELECT r.id INTO id FROM pgqueue.runs r
         WHERE r.task = enqueue_one.task AND r.idempotency_key = enqueue_one.idempotency_key;
        created := false;
        RETURN;
    END IF;
    created := true;
    INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task, concurrency_key)
    VALUES (id, v_queue, v_priority, v_run_at, enqueue_one.task, v_key);
    IF v_run_at <= now() THEN
        PERFORM pg_notify('pgqueue_ready', v_queue);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pgqueue.enqueue(
    task              text,
    input             jsonb DEFAULT '{}',
    queue             text DEFAULT NULL,
    priority          integer DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,
    delay             interval DEFAULT NULL,
    idempotency_key   text DEFAULT NULL,
    tags              text[] DEFAULT '{}',
    metadata          jsonb DEFAULT '{}',
    schedule_to_start interval DEFAULT NULL,
    concurrency_key   text DEFAULT NULL,
    rate_cost         jsonb DEFAULT NULL,
    trace_context     jsonb DEFAULT NULL,
    deadline          interval DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    SELECT e.id FROM pgqueue.enqueue_one(task, coalesce(input, '{}'::jsonb), queue, priority, run_at, delay,
                                         idempotency_key, tags, metadata, schedule_to_start,
                                         concurrency_key, rate_cost, trace_context, deadline) AS e;
$$;

COMMENT ON FUNCTION pgqueue.enqueue IS
    'Enqueue one run of TASK; returns its id (the existing run''s id for a repeated idempotency key).';
