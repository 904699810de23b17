-- Streams: the output a running run streams (`ctx.stream(chunk)`) and its latest progress
-- (`ctx.progress(done, total, message)`), written by the worker in batches, read from any offset.
--
-- A run's chunks have offsets 0, 1, 2, ... in write order, gapless, across all its attempts:
-- a retry appends after what earlier attempts wrote, each chunk marked with its attempt. Writes
-- are fenced like step checkpoints: only the attempt that holds the run (running, this attempt,
-- this worker) writes; a zombie attempt's chunks are dropped. Each write sends
-- NOTIFY pgqueue_stream_<run id> with the stream's new length, so readers wake up; the chunks
-- themselves stay in pgqueue.stream_chunks until retention prunes the run.
--
-- Limits (pgqueue.settings, changed by the schema owner only): a chunk's JSON text is at most
-- max_stream_chunk_bytes (default 64 KiB) and nests at most max_json_depth() levels; a run
-- writes at most max_stream_chunks chunks (default 100,000) over all its attempts.

-- Largest accepted stream chunk: bytes of its JSON text (UTF-8).
CREATE OR REPLACE FUNCTION pgqueue.max_stream_chunk_bytes() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT pgqueue.setting('max_stream_chunk_bytes', 65536)
$$;

-- Most chunks one run may stream, over all its attempts.
CREATE OR REPLACE FUNCTION pgqueue.max_stream_chunks() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT pgqueue.setting('max_stream_chunks', 100000)
$$;

-- The notification channel of run RUN_ID's stream (LISTEN to it to learn of new chunks).
CREATE OR REPLACE FUNCTION pgqueue.stream_channel(run_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'pgqueue_stream_' || run_id
$$;

-- Append CHUNKS (JSON texts) to the streams of runs RUNS at ATTEMPTS, for WORKER: element i of
-- each array is one chunk, in order. One row per (run, attempt) given: the chunks written, and
-- those refused: over the size or nesting limit (too_large: each such chunk is skipped), over the
-- per-run count (too_many: the rest of the batch is dropped), or all of them when the attempt no
-- longer holds the run (taken_over). Never raises for one run's chunks, so that a batch of
-- many runs' chunks is never lost for one of them.
CREATE OR REPLACE FUNCTION pgqueue.write_stream(worker uuid, runs bigint[], attempts integer[], chunks text[])
RETURNS TABLE (run_id bigint, attempt integer, written integer, too_large integer, too_many integer,
               taken_over boolean, length bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_max_bytes  bigint := pgqueue.max_stream_chunk_bytes();
    v_max_chunks bigint := pgqueue.max_stream_chunks();
    v_run        bigint;
    v_attempt    integer;
    v_n          integer;
    v_bad        integer;
    v_start      bigint;
    v_take       integer;
BEGIN
    FOR v_run, v_attempt, v_n, v_bad IN
        SELECT i.run_id, i.attempt, count(*)::int,
               count(*) FILTER (WHERE octet_length(i.data) > v_max_bytes
                                   OR pgqueue.json_too_deep(i.data::jsonb))::int
          FROM unnest(runs, attempts, chunks) AS i(run_id, attempt, data)
         GROUP BY 1, 2 ORDER BY 1, 2
    LOOP
        -- the fence: locked until commit, so a takeover waits for these chunks or they are dropped
        PERFORM 1 FROM pgqueue.runs r
         WHERE r.id = v_run AND r.attempt = v_attempt AND r.status = 'running' AND r.worker_id = worker
           FOR SHARE;
        IF NOT FOUND THEN
            RETURN QUERY SELECT v_run, v_attempt, 0, 0, 0, true, NULL::bigint;
            CONTINUE;
        END IF;
        -- the run's head row, locked: its chunks get the next offsets in order
        INSERT INTO pgqueue.streams AS s (run_id, attempt) VALUES (v_run, v_attempt)
        ON CONFLICT (run_id) DO UPDATE SET attempt = excluded.attempt
        RETURNING s.chunks INTO v_start;
        v_take := least(v_n - v_bad, greatest(v_max_chunks - v_start, 0));
        INSERT INTO pgqueue.stream_chunks (run_id, "offset", attempt, data)
        SELECT v_run, v_start + row_number() OVER (ORDER BY c.ord) - 1, v_attempt, c.data::jsonb
          FROM (SELECT i.data, i.ord
                  FROM unnest(runs, attempts, chunks) WITH ORDINALITY AS i(run_id, attempt, data, ord)
                 WHERE i.run_id = v_run AND i.attempt = v_attempt
                   AND octet_length(i.data) <= v_max_bytes AND NOT pgqueue.json_too_deep(i.data::jsonb)
                 ORDER BY i.ord
                 LIMIT v_take) AS c;
        UPDATE pgqueue.streams s SET chunks = v_start + v_take, updated_at = now() WHERE s.run_id = v_run;
        PERFORM pg_notify(pgqueue.stream_channel(v_run), (v_start + v_take)::text);
        RETURN QUERY SELECT v_run, v_attempt, v_take, v_bad, v_n - v_bad - v_take, false, v_start + v_take;
    END LOOP;
END
$$;

-- Set the latest progress of runs RUNS at ATTEMPTS, for WORKER (fenced like write_stream):
-- DONE out of TOTAL (NULL: unknown) and a MESSAGE (cut to 1,000 characters). Returns the runs
-- whose progress was written.
CREATE OR REPLACE FUNCTION pgqueue.write_progress(worker uuid, runs bigint[], attempts integer[],
                                                  done double precision[], total double precision[],
                                                  message text[])
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT i.* FROM unnest(runs, attempts, done, total, message) AS i(run_id, attempt, done, total, message)
    ), fenced AS (
        SELECT i.* FROM input i
         CROSS JOIN LATERAL (
            SELECT 1 FROM pgqueue.runs r
             WHERE r.id = i.run_id AND r.attempt = i.attempt AND r.status = 'running' AND r.worker_id = worker
               FOR SHARE
         ) AS fence
    ), written AS (
        INSERT INTO pgqueue.streams AS s (run_id, attempt, progress_done, progress_total, progress_message,
                                          progress_at)
        SELECT f.run_id, f.attempt, f.done, f.total, left(f.message, 1000), now() FROM fenced f
        ON CONFLICT (run_id) DO UPDATE
           SET attempt = excluded.attempt, progress_done = excluded.progress_done,
               progress_total = excluded.progress_total, progress_message = excluded.progress_message,
               progress_at = excluded.progress_at, updated_at = now()
        RETURNING s.run_id, s.chunks
    )
    SELECT w.run_id FROM written w, LATERAL pg_notify(pgqueue.stream_channel(w.run_id), w.chunks::text);
END
$$;

-- The chunks of run RUN_ID's stream from offset FROM_OFFSET, at most LIMIT_COUNT of them, in
-- order. An unknown run raises PQ003; a negative offset PQ002.
CREATE OR REPLACE FUNCTION pgqueue.read_stream(run_id bigint, from_offset bigint DEFAULT 0,
                                               limit_count integer DEFAULT 1000)
RETURNS TABLE ("offset" bigint, attempt integer, data jsonb, created_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    IF from_offset IS NULL OR from_offset < 0 THEN
        RAISE EXCEPTION 'pgqueue: a stream offset must be 0 or more (got %)', coalesce(from_offset::text, 'NULL')
            USING ERRCODE = 'PQ002', HINT = 'Offset 0 reads the stream from its start.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pgqueue.runs r WHERE r.id = read_stream.run_id) THEN
        RAISE EXCEPTION 'pgqueue: no run with id %', read_stream.run_id USING ERRCODE = 'PQ003',
            HINT = 'Check the id (`pgqueue runs list`); finished runs are pruned after their retention.';
    END IF;
    RETURN QUERY
    SELECT c."offset", c.attempt, c.data, c.created_at FROM pgqueue.stream_chunks c
     WHERE c.run_id = read_stream.run_id AND c."offset" >= from_offset
     ORDER BY c."offset"
     LIMIT greatest(limit_count, 0);
END
$$;
