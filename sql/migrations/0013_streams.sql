-- pgqueue schema, version 13: streamed output and progress of running runs.
-- The functions that write and read them are in sql/functions/streams.sql.

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

-- Size of one chunk (its JSON text, in bytes) and chunks per run, enforced by write_stream.
ALTER TABLE pgqueue.settings DROP CONSTRAINT settings_name_check;
ALTER TABLE pgqueue.settings ADD CONSTRAINT settings_name_check
    CHECK (name IN ('max_input_bytes', 'max_metadata_bytes', 'max_stream_chunk_bytes', 'max_stream_chunks'));
INSERT INTO pgqueue.settings (name, value) VALUES ('max_stream_chunk_bytes', 65536), ('max_stream_chunks', 100000);
