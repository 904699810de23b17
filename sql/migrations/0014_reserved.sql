-- Placeholder so that this branch numbers its migrations without a gap: 0014 belongs to a
-- branch merged before this one (h18-sessions was given 0015). Delete this file at the merge.
SELECT 1;
