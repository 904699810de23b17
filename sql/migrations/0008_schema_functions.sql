-- pgqueue schema, version 8: the ledger of the functions in sql/functions.
--
-- Functions are not migrations: `pgqueue migrate` re-applies every file of sql/functions at the
-- end of each run, in one transaction, and records here the sha256 of the files it applied.
-- Workers and clients compare it with the hash of their own files and refuse a database whose
-- functions differ, so that a change of only a function file cannot run against stale ones.
CREATE TABLE pgqueue.schema_functions (
    -- a single row
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    sha256     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
