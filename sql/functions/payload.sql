-- Payload limits: what a run's input, a step's output, a result or an event payload may be.
--
-- An input must be a JSON object of at most `max_input_bytes` bytes (stored jsonb size;
-- default 1 MiB); step outputs, results and event payloads have the same size limit; metadata,
-- trace context, rate costs and tags at most `max_metadata_bytes` (default 64 KiB). The sizes
-- live in pgqueue.settings, which only the schema's owner can change (a session SET cannot lift
-- them):
--   UPDATE pgqueue.settings SET value = 4194304 WHERE name = 'max_input_bytes';
-- Every stored JSON value nests objects and arrays at most pgqueue.max_json_depth() (64) levels
-- deep (the same number as pgqueue.codec.MAX_JSON_DEPTH): deeper values would make decoders
-- recurse until they fail, in the worker and in every other reader.

-- A size limit from pgqueue.settings (FALLBACK when the row is missing).
CREATE OR REPLACE FUNCTION pgqueue.setting(name text, fallback bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT s.value FROM pgqueue.settings s WHERE s.name = setting.name), fallback)
$$;

-- Largest accepted input, step output, result or event payload (stored jsonb size).
CREATE OR REPLACE FUNCTION pgqueue.max_input_bytes() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT pgqueue.setting('max_input_bytes', 1048576)
$$;

-- Largest accepted metadata, trace context, rate cost or tag list (stored size).
CREATE OR REPLACE FUNCTION pgqueue.max_metadata_bytes() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT pgqueue.setting('max_metadata_bytes', 65536)
$$;

-- Deepest nesting of objects and arrays in a stored JSON value ({"a": [1]} is 2 deep).
CREATE OR REPLACE FUNCTION pgqueue.max_json_depth() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 64 $$;

-- Whether DOC nests deeper than max_json_depth(): a container at level 64 (the top is level 0)
-- is the 65th. The path walk stops at that level, so a very deep value costs no deep recursion.
CREATE OR REPLACE FUNCTION pgqueue.json_too_deep(doc jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT doc IS NOT NULL
       AND jsonb_path_exists(doc, 'strict $.**{64} ? (@.type() == "object" || @.type() == "array")')
$$;

-- Whether DOC can be a run's input: a JSON object within the size and nesting limits.
CREATE OR REPLACE FUNCTION pgqueue.input_ok(doc jsonb, max_bytes bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT doc IS NOT NULL AND jsonb_typeof(doc) = 'object' AND pg_column_size(doc) <= max_bytes
       AND NOT pgqueue.json_too_deep(doc)
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
    IF pg_column_size(doc) > max_bytes THEN
        RAISE EXCEPTION 'pgqueue: input #% of task "%" is % bytes, over the limit of % bytes',
            idx, task, pg_column_size(doc), max_bytes USING ERRCODE = 'PQ001',
            HINT = 'Store large payloads elsewhere and pass a reference, or raise the limit (as the schema '
                   'owner): UPDATE pgqueue.settings SET value = <bytes> WHERE name = ''max_input_bytes''.';
    END IF;
    PERFORM pgqueue.check_payload(doc, format('input #%s of task "%s"', idx, task));
END
$$;

-- Refuse a payload over the size or nesting limit (inputs, step outputs, results, event
-- payloads with max_input_bytes(); metadata and the like with max_metadata_bytes()).
CREATE OR REPLACE FUNCTION pgqueue.check_payload(doc jsonb, what text, max_bytes bigint DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_limit bigint := coalesce(max_bytes, pgqueue.max_input_bytes());
BEGIN
    IF doc IS NOT NULL AND pg_column_size(doc) > v_limit THEN
        RAISE EXCEPTION 'pgqueue: % is % bytes, over the limit of % bytes', what, pg_column_size(doc),
            v_limit USING ERRCODE = 'PQ001',
            HINT = 'Store large blobs elsewhere (a table, object storage) and pass a reference.';
    END IF;
    IF pgqueue.json_too_deep(doc) THEN
        RAISE EXCEPTION 'pgqueue: % nests objects and arrays deeper than the limit of % levels',
            what, pgqueue.max_json_depth() USING ERRCODE = 'PQ002',
            HINT = 'Flatten the value (or store it elsewhere and pass a reference).';
    END IF;
    RETURN doc;
END
$$;

-- Refuse enqueue options over max_metadata_bytes() or the nesting limit.
CREATE OR REPLACE FUNCTION pgqueue.check_options(metadata jsonb, trace_context jsonb, tags text[],
                                                 rate_costs jsonb[]) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_limit bigint := pgqueue.max_metadata_bytes();
BEGIN
    PERFORM pgqueue.check_payload(metadata, 'metadata', v_limit);
    PERFORM pgqueue.check_payload(trace_context, 'trace_context', v_limit);
    PERFORM pgqueue.check_payload(to_jsonb(tags), 'the tags', v_limit);
    PERFORM pgqueue.check_payload(c, 'rate_cost', v_limit) FROM unnest(rate_costs) c;
END
$$;

-- Names of tasks, queues, schedules, rate limits and events: 1 to 200 characters, the first a
-- letter or "_", the others letters, digits or _ . : - (ASCII; the same rule as Python's
-- pgqueue.task.NAME_PATTERN). Nothing else can reach a log line, a NOTIFY payload or a CLI table.
CREATE OR REPLACE FUNCTION pgqueue.name_ok(name text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT name ~ '^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$'
$$;

-- Raise a clear error when NAME (a WHAT: 'task', 'queue', ...) is not a valid name.
CREATE OR REPLACE FUNCTION pgqueue.check_name(what text, name text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF name IS NULL OR NOT pgqueue.name_ok(name) THEN
        RAISE EXCEPTION 'pgqueue: % name % is not valid', what,
            CASE WHEN name IS NULL THEN 'NULL'
                 WHEN length(name) > 200 THEN format('of %s characters', length(name))
                 ELSE to_json(left(name, 80))::text END  -- JSON quoting escapes control characters
            USING ERRCODE = 'PQ002',
            HINT = 'Use 1 to 200 characters: a letter or _ first, then letters, digits or _ . : -';
    END IF;
    RETURN name;
END
$$;
