-- Indexes for the dashboard's run lists and charts (benchmarks/dashboard_queries.py shows the plans
-- on 1,000,000 runs). Each is partial or BRIN so the hot path pays little: runs that succeed
-- (the bulk) add no entry to the status index, runs without tags or metadata add none to the GIN
-- indexes, and only the final update of a run (finished_at set) adds one to runs_finished_at.

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
