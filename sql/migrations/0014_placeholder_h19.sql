-- Placeholder for the migration number another branch of this round takes (0014). The
-- integrator deletes this file at merge and renumbers 0016_placement.sql if needed.
SELECT 1;
