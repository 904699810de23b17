-- pgqueue schema, version 11: limits a producer cannot lift, and names checked by the database.
--
-- The size limits were the GUC pgqueue.max_input_bytes, which any role can SET for its own
-- session. They now live in pgqueue.settings, which only its owner (the role that runs
-- `pgqueue migrate`) can change; sql/functions/payload.sql reads them. A value the database
-- had set for the old GUC (ALTER DATABASE ... SET) is carried over.
CREATE TABLE pgqueue.settings (
    name  text PRIMARY KEY CHECK (name IN ('max_input_bytes', 'max_metadata_bytes')),
    value bigint NOT NULL CHECK (value > 0)
);

COMMENT ON TABLE pgqueue.settings IS
    'Limits enforced by the enqueue and payload functions; writable only by the schema owner.';

INSERT INTO pgqueue.settings (name, value)
VALUES ('max_input_bytes', coalesce(nullif(current_setting('pgqueue.max_input_bytes', true), '')::bigint, 1048576)),
       ('max_metadata_bytes', 65536);

REVOKE ALL ON pgqueue.settings FROM PUBLIC;

-- check_payload gained its size-limit argument (sql/functions/payload.sql)
DROP FUNCTION IF EXISTS pgqueue.check_payload(jsonb, text);

-- catch_up_limit counts missed ticks to fire: 0 or less meant "no limit" by accident
UPDATE pgqueue.cron_schedules SET catch_up_limit = NULL WHERE catch_up_limit < 1;
ALTER TABLE pgqueue.cron_schedules ADD CONSTRAINT cron_schedules_catch_up_limit_check CHECK (catch_up_limit >= 1);
