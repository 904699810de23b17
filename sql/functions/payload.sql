-- Payload limits: what a run's input, a step's output, a result or an event payload may be.
--
-- An input must be a JSON object of at most `pgqueue.max_input_bytes` bytes (stored jsonb
-- size; default 1 MiB); the other payloads have the same size limit. Change it per database with
--   ALTER DATABASE mydb SET pgqueue.max_input_bytes = 4194304;

-- Largest accepted input (stored jsonb size), from the pgqueue.max_input_bytes setting.
CREATE OR REPLACE FUNCTION pgqueue.max_input_bytes() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('pgqueue.max_input_bytes', true), '')::bigint, 1048576)
$$;

-- Whether DOC can be a run's input: a JSON object within the size limit.
CREATE OR REPLACE FUNCTION pgqueue.input_ok(doc jsonb, max_bytes bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT doc IS NOT NULL AND jsonb_typeof(doc) = 'object' AND pg_column_size(doc) <= max_bytes
$$;

-- Raise the error that says why DOC (input number IDX of TASK) was refused.
CREATE OR REPLACE FUNCTION pgqueue.reject_input(task text, doc jsonb, idx bigint, max_bytes bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF doc IS NULL OR jsonb_typeof(doc) <> 'object' THEN
        RAISE EXCEPTION 'pgqueue: input #% of task "%" is not a JSON object', idx, task
            USING ERRCODE = 'PQ002',
            HINT = 'A run''s input is a JSON object of the task''s arguments, e.g. {"doc_id": 42}.';
    END IF;
    RAISE EXCEPTION 'pgqueue: input #% of task "%" is % bytes, over the limit of % bytes',
        idx, task, pg_column_size(doc), max_bytes USING ERRCODE = 'PQ001',
        HINT = 'Store large payloads elsewhere and pass a reference, or raise the limit with '
               'ALTER DATABASE ... SET pgqueue.max_input_bytes = <bytes>.';
END
$$;

-- Refuse a payload over the size limit (step outputs, results, event payloads).
CREATE OR REPLACE FUNCTION pgqueue.check_payload(doc jsonb, what text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF doc IS NOT NULL AND pg_column_size(doc) > pgqueue.max_input_bytes() THEN
        RAISE EXCEPTION 'pgqueue: % is % bytes, over the limit of % bytes', what, pg_column_size(doc),
            pgqueue.max_input_bytes() USING ERRCODE = 'PQ001',
            HINT = 'Store large blobs elsewhere (a table, object storage) and pass a reference.';
    END IF;
    RETURN doc;
END
$$;
