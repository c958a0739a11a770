CREATE TABLE budget_ledger (
                key TEXT PRIMARY KEY,
                usd DOUBLE PRECISION NOT NULL,
                requests BIGINT NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            );
CREATE INDEX budget_ledger_expiry ON budget_ledger (expires_at);
