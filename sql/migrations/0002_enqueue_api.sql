-- The public SQL API for putting work on the queue. The Python client calls these same
-- functions, so a run enqueued from psql, a trigger or another language is the same run.
--
-- Input limits: an input must be a JSON object of at most `pgqueue.max_input_bytes`
-- bytes (stored jsonb size; default 1 MiB). Change it per database with
--   ALTER DATABASE mydb SET pgqueue.max_input_bytes = 4194304;

CREATE FUNCTION pgqueue.enqueue_many(
    task              text,
    inputs            jsonb[],
    queue             text DEFAULT NULL,
    priority          integer DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,
    delay             interval DEFAULT NULL,
    idempotency_keys  text[] DEFAULT NULL,
    tags              text[] DEFAULT '{}',
    metadata          jsonb DEFAULT '{}',
    schedule_to_start interval DEFAULT NULL
) RETURNS TABLE (id bigint, created boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_limit    bigint := coalesce(nullif(current_setting('pgqueue.max_input_bytes', true), '')::bigint,
                                  1048576);
    v_queue    text := enqueue_many.queue;
    v_priority integer := enqueue_many.priority;
    v_s2s      interval := enqueue_many.schedule_to_start;
    v_run_at   timestamptz := coalesce(enqueue_many.run_at, now()) + coalesce(enqueue_many.delay, '0');
    v_bad      bigint;
    v_size     integer;
    v_new      bigint[];
    t_queue    text;
    t_priority integer;
    t_s2s      interval;
BEGIN
    IF enqueue_many.task IS NULL OR enqueue_many.task = '' THEN
        RAISE EXCEPTION 'pgqueue: task name is empty' USING ERRCODE = 'PQ002',
            HINT = 'Pass the name the task was declared with, e.g. pgqueue.enqueue(''summarize'', ''{}'').';
    END IF;
    IF idempotency_keys IS NOT NULL
       AND cardinality(idempotency_keys) <> cardinality(inputs) THEN
        RAISE EXCEPTION 'pgqueue: % idempotency keys for % inputs',
            cardinality(idempotency_keys), cardinality(inputs) USING ERRCODE = 'PQ002',
            HINT = 'Give one key per input, or none.';
    END IF;

    SELECT u.ord INTO v_bad FROM unnest(inputs) WITH ORDINALITY AS u(doc, ord)
     WHERE u.doc IS NULL OR jsonb_typeof(u.doc) <> 'object' LIMIT 1;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'pgqueue: input #% of task "%" is not a JSON object', v_bad - 1, enqueue_many.task
            USING ERRCODE = 'PQ002',
            HINT = 'A run''s input is a JSON object of the task''s arguments, e.g. {"doc_id": 42}.';
    END IF;

    SELECT u.ord, pg_column_size(u.doc) INTO v_bad, v_size
      FROM unnest(inputs) WITH ORDINALITY AS u(doc, ord)
     WHERE pg_column_size(u.doc) > v_limit LIMIT 1;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'pgqueue: input #% of task "%" is % bytes, over the limit of % bytes',
            v_bad - 1, enqueue_many.task, v_size, v_limit USING ERRCODE = 'PQ001',
            HINT = 'Store large payloads elsewhere and pass a reference, or raise the limit with '
                   'ALTER DATABASE ... SET pgqueue.max_input_bytes = <bytes>.';
    END IF;

    IF v_queue IS NULL OR v_priority IS NULL THEN
        -- defaults registered by the task's workers (none: queue 'default', priority 0)
        SELECT t.queue, t.priority, t.schedule_to_start INTO t_queue, t_priority, t_s2s
          FROM pgqueue.tasks t WHERE t.name = enqueue_many.task;
        v_queue := coalesce(v_queue, t_queue, 'default');
        v_priority := coalesce(v_priority, t_priority, 0);
        v_s2s := coalesce(v_s2s, t_s2s);
    END IF;
    IF v_priority NOT BETWEEN -32768 AND 32767 THEN
        RAISE EXCEPTION 'pgqueue: priority % is out of range', v_priority USING ERRCODE = 'PQ002',
            HINT = 'Use a priority between -32768 and 32767; higher runs first.';
    END IF;

    IF idempotency_keys IS NULL THEN
        RETURN QUERY
        WITH ins AS (
            INSERT INTO pgqueue.runs (task, queue, priority, input, run_at, expires_at, tags, metadata)
            SELECT enqueue_many.task, v_queue, v_priority, u.doc, v_run_at, v_run_at + v_s2s,
                   coalesce(enqueue_many.tags, '{}'), coalesce(enqueue_many.metadata, '{}')
              FROM unnest(inputs) WITH ORDINALITY AS u(doc, ord)
             ORDER BY u.ord
            RETURNING id
        ), rdy AS (
            INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task)
            SELECT ins.id, v_queue, v_priority, v_run_at, enqueue_many.task FROM ins
        )
        SELECT ins.id, true FROM ins ORDER BY ins.id;
    ELSE
        WITH ins AS (
            INSERT INTO pgqueue.runs (task, queue, priority, input, run_at, expires_at,
                                      idempotency_key, tags, metadata)
            SELECT enqueue_many.task, v_queue, v_priority, u.doc, v_run_at, v_run_at + v_s2s,
                   u.key, coalesce(enqueue_many.tags, '{}'), coalesce(enqueue_many.metadata, '{}')
              FROM unnest(inputs, idempotency_keys) WITH ORDINALITY AS u(doc, key, ord)
             ORDER BY u.ord
            ON CONFLICT (task, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id
        ), rdy AS (
            INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task)
            SELECT ins.id, v_queue, v_priority, v_run_at, enqueue_many.task FROM ins
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

CREATE FUNCTION pgqueue.enqueue(
    task              text,
    input             jsonb DEFAULT '{}',
    queue             text DEFAULT NULL,
    priority          integer DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,
    delay             interval DEFAULT NULL,
    idempotency_key   text DEFAULT NULL,
    tags              text[] DEFAULT '{}',
    metadata          jsonb DEFAULT '{}',
    schedule_to_start interval DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    SELECT e.id FROM pgqueue.enqueue_many(
        task, ARRAY[coalesce(input, '{}'::jsonb)], queue, priority, run_at, delay,
        CASE WHEN idempotency_key IS NULL THEN NULL ELSE ARRAY[idempotency_key] END,
        tags, metadata, schedule_to_start) AS e;
$$;

COMMENT ON FUNCTION pgqueue.enqueue IS
    'Enqueue one run of TASK; returns its id (the existing run''s id for a repeated idempotency key).';
