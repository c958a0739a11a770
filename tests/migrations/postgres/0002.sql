CREATE TABLE parses (
                sha256 TEXT PRIMARY KEY REFERENCES documents (sha256),
                markdown TEXT NOT NULL,
                pages INTEGER NOT NULL,
                failed_pages TEXT NOT NULL,
                parser_job_id TEXT NOT NULL,
                path TEXT NOT NULL
            );
CREATE TABLE chunks (
                sha256 TEXT NOT NULL REFERENCES documents (sha256),
                chunk_index INTEGER NOT NULL,
                text TEXT NOT NULL,
                PRIMARY KEY (sha256, chunk_index)
            );
CREATE TABLE embeddings (
                sha256 TEXT NOT NULL,
                chunk_index INTEGER NOT NULL,
                model TEXT NOT NULL,
                dimensions INTEGER NOT NULL,
                vector BYTEA NOT NULL,
                path TEXT NOT NULL,
                PRIMARY KEY (sha256, chunk_index, model, dimensions),
                FOREIGN KEY (sha256, chunk_index) REFERENCES chunks (sha256, chunk_index)
            );
