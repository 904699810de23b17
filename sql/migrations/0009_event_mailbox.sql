-- pgqueue schema, version 9: waits take events like a mailbox.
--
-- Each wait of a run takes the next event (name, key) this run has not taken yet, in send
-- order, exactly once. A run's place in its mailbox of (name, key) is the last event one of its
-- wait steps took: the step row records that event's id. Replaying a run from an earlier step
-- deletes the later steps, and so gives their events back to the replay.
--
-- Wait steps recorded before this version have no event id: a run that was waiting across the
-- upgrade starts its mailbox from the first event since it was created.
ALTER TABLE pgqueue.steps ADD COLUMN event_id bigint;

-- The next event after a run's place, in send order (ids of one (name, key) are handed out under
-- the key's lock, so their order is the order of the sends).
CREATE INDEX events_name_key_id ON pgqueue.events (name, key, id);
