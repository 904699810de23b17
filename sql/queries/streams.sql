-- Queries of run streams: the head (status, length, progress) and the chunks from an offset.
-- The writes are pgqueue.write_stream / pgqueue.write_progress (sql/functions/streams.sql),
-- fenced there like step checkpoints.

-- name: state
SELECT r.status, coalesce(s.chunks, 0) AS chunks, s.attempt, s.progress_done, s.progress_total,
       s.progress_message, s.progress_at
  FROM pgqueue.runs r
  LEFT JOIN pgqueue.streams s ON s.run_id = r.id
 WHERE r.id = %s

-- name: read
SELECT "offset", attempt, data, created_at
  FROM pgqueue.read_stream(%(run)s, %(offset)s, %(limit)s)

-- name: write
SELECT run_id, attempt, written, too_large, too_many, taken_over, length
  FROM pgqueue.write_stream(%(worker)s::uuid, %(runs)s::bigint[], %(attempts)s::int[], %(chunks)s::text[])

-- name: write_progress
SELECT w AS run_id
  FROM pgqueue.write_progress(%(worker)s::uuid, %(runs)s::bigint[], %(attempts)s::int[],
                              %(done)s::float8[], %(total)s::float8[], %(message)s::text[]) AS w

-- name: limits
SELECT pgqueue.max_stream_chunk_bytes() AS chunk_bytes, pgqueue.max_stream_chunks() AS chunks
