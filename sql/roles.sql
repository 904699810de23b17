-- Least privilege: three group roles (NOLOGIN) to grant to your login roles.
--
--   pgqueue_producer  enqueue runs and read runs, their attempts and steps (wait for results)
--   pgqueue_worker    run workers: read and write pgqueue's rows; no DDL (cannot migrate)
--   pgqueue_reader    the read-only dashboard and `pgqueue runs/status/top`: read everything
--
-- Run by the role that owns the pgqueue schema (the one that runs `pgqueue migrate`, e.g. the
-- database's owner: no superuser needed) with CREATEROLE, or after an administrator created
-- the three roles; `pgqueue roles` runs this file. Idempotent: run it again after each
-- `pgqueue migrate` (the worker and reader roles get future tables through default privileges,
-- the producer's narrower grants are per table).
--   GRANT pgqueue_worker TO app_worker;  GRANT pgqueue_producer TO web_app;  ...

DO $$
DECLARE
    r text;
    v_owner oid := (SELECT nspowner FROM pg_namespace WHERE nspname = 'pgqueue');
BEGIN
    -- a GRANT by anyone else only warns ("no privileges were granted"): refuse instead
    IF v_owner IS NULL THEN
        RAISE EXCEPTION 'the pgqueue schema is missing: run `pgqueue migrate` first';
    END IF;
    IF NOT pg_has_role(current_user, v_owner, 'MEMBER') THEN
        RAISE EXCEPTION 'must be owner of schema pgqueue (%) to grant its roles; run this as that role',
            pg_get_userbyid(v_owner);
    END IF;
    FOREACH r IN ARRAY ARRAY['pgqueue_producer', 'pgqueue_worker', 'pgqueue_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA pgqueue TO pgqueue_producer, pgqueue_worker, pgqueue_reader;

-- reader: every table, read only
GRANT SELECT ON ALL TABLES IN SCHEMA pgqueue TO pgqueue_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA pgqueue GRANT SELECT ON TABLES TO pgqueue_reader;

-- worker: rows of every table (claims, outcomes, steps, leases, registry, cron, pruning); the
-- migration ledger read only
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgqueue TO pgqueue_worker;
ALTER DEFAULT PRIVILEGES IN SCHEMA pgqueue GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO pgqueue_worker;
REVOKE INSERT, UPDATE, DELETE ON pgqueue.schema_migrations, pgqueue.schema_functions FROM pgqueue_worker;

-- producer: what pgqueue.enqueue reads and inserts, and reading runs; nothing else is written
GRANT SELECT ON pgqueue.schema_migrations, pgqueue.schema_functions, pgqueue.settings, pgqueue.tasks, pgqueue.ready,
    pgqueue.queues, pgqueue.concurrency_limits, pgqueue.rate_limits, pgqueue.runs, pgqueue.attempts,
    pgqueue.steps TO pgqueue_producer;
-- the placement a new run gets (the trigger on ready reads its task's)
GRANT SELECT ON pgqueue.task_placement TO pgqueue_producer;
GRANT INSERT ON pgqueue.runs, pgqueue.ready TO pgqueue_producer;
-- keyed sessions: reading states (pgqueue.session_state); their admission writes as the owner
GRANT SELECT ON pgqueue.sessions, pgqueue.session_keys TO pgqueue_producer;
