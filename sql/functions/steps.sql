-- Step checkpoints: the function the worker's step writer calls (durable.record_steps in
-- sql/queries/durable.sql), fenced as the queries of that file are (see its top).

-- Write the step checkpoints of many runs of WORKER at once (one element of each array per
-- checkpoint); the rows returned are the ones written, with the step's attempt count. Each is
-- written only while its run is running that attempt on this worker (FOR SHARE: see the fence
-- at the top of sql/queries/durable.sql).
-- Each checkpoint finds its run by id: the planner, expecting almost no running runs, would
-- otherwise scan every running run and join each with every checkpoint. A function, on a
-- generic plan: planning the statement at every call cost more than running it (0.24 of 0.39
-- ms for a batch).
CREATE OR REPLACE FUNCTION pgqueue.record_steps(
    worker uuid, runs bigint[], run_attempts integer[], keys text[], seqs integer[], names text[],
    statuses text[], outputs text[], errors text[], durations double precision[])
RETURNS TABLE (run_id bigint, step_key text, attempts integer)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    INSERT INTO pgqueue.steps AS s (run_id, step_key, seq, name, status, output, error, attempts,
                                    started_at, finished_at)
    SELECT i.run_id, i.step_key, i.seq, i.name, i.status, i.output::jsonb, i.error::jsonb, 1,
           now() - make_interval(secs => i.duration), now()
      FROM unnest(record_steps.runs, record_steps.run_attempts, record_steps.keys, record_steps.seqs,
                  record_steps.names, record_steps.statuses, record_steps.outputs, record_steps.errors,
                  record_steps.durations)
           AS i(run_id, attempt, step_key, seq, name, status, output, error, duration)
     CROSS JOIN LATERAL (
        SELECT 1 FROM pgqueue.runs r
         WHERE r.id = i.run_id AND r.attempt = i.attempt AND r.status = 'running'
           AND r.worker_id = record_steps.worker
           FOR SHARE
     ) AS fence
    ON CONFLICT (run_id, step_key) DO UPDATE
       SET status = excluded.status, output = excluded.output, error = excluded.error,
           attempts = s.attempts + 1, started_at = excluded.started_at, finished_at = excluded.finished_at
    RETURNING s.run_id, s.step_key, s.attempts;
END
$$;
