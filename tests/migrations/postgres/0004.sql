ALTER TABLE jobs ADD COLUMN correlation_id TEXT;
UPDATE jobs SET correlation_id = COALESCE(
                (SELECT e.correlation_id FROM job_events e
                 WHERE e.job_id = jobs.id AND e.trigger = 'create'),
                id);
