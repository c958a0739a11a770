CREATE TABLE budget_ledger (
                key TEXT PRIMARY KEY,
                usd REAL NOT NULL,
                requests INTEGER NOT NULL,
                expires_at REAL NOT NULL
            );
CREATE INDEX budget_ledger_expiry ON budget_ledger (expires_at);
