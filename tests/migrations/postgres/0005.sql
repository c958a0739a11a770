CREATE TABLE remote_parses (
                name TEXT PRIMARY KEY,
                sha256 TEXT NOT NULL REFERENCES documents (sha256),
                job_id TEXT NOT NULL REFERENCES jobs (id),
                correlation_id TEXT NOT NULL,
                status TEXT NOT NULL,
                remote_id TEXT,
                api_version TEXT NOT NULL,
                options TEXT NOT NULL,
                estimated_pages INTEGER NOT NULL,
                estimated_usd DOUBLE PRECISION NOT NULL,
                reservation TEXT,
                due_at DOUBLE PRECISION NOT NULL,
                deadline DOUBLE PRECISION NOT NULL,
                polls INTEGER NOT NULL,
                claimed_by TEXT,
                error TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at TEXT NOT NULL
            );
CREATE UNIQUE INDEX remote_parses_live ON remote_parses (sha256)
                WHERE status IN ('intent', 'live');
CREATE INDEX remote_parses_due ON remote_parses (due_at)
                WHERE status = 'live';
CREATE INDEX remote_parses_remote_id ON remote_parses (remote_id);
