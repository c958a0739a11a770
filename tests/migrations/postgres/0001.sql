CREATE TABLE documents (
                sha256 TEXT PRIMARY KEY,
                content BYTEA NOT NULL
            );
CREATE TABLE jobs (
                id TEXT COLLATE "C" PRIMARY KEY,
                sha256 TEXT NOT NULL UNIQUE REFERENCES documents (sha256),
                filename TEXT NOT NULL,
                mime_type TEXT NOT NULL,
                state TEXT NOT NULL,
                version INTEGER NOT NULL,
                step_attempts INTEGER NOT NULL,
                not_before DOUBLE PRECISION NOT NULL,
                wait_reason TEXT,
                resume_to TEXT,
                degraded BOOLEAN NOT NULL,
                last_error TEXT,
                failure_reason TEXT,
                lease_owner TEXT,
                lease_expires_at DOUBLE PRECISION,
                created_at TEXT COLLATE "C" NOT NULL,
                updated_at TEXT NOT NULL
            );
CREATE INDEX jobs_ready ON jobs (not_before)
                WHERE state NOT IN ('complete', 'failed');
CREATE INDEX jobs_state ON jobs (state);
CREATE TABLE job_events (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                job_id TEXT NOT NULL REFERENCES jobs (id),
                version INTEGER NOT NULL,
                source TEXT,
                dest TEXT NOT NULL,
                trigger TEXT NOT NULL,
                reason TEXT NOT NULL,
                correlation_id TEXT,
                at TEXT NOT NULL
            );
CREATE INDEX job_events_job ON job_events (job_id, seq);
