"""The coordinator's tables as numbered migrations, in SQLite's dialect; `user_version` says
which have run (`coordinator.storage.sqlite.migrate`).

Never edit a migration that has shipped: change a table with a new one. A second engine brings
its own migrations to the same tables, keys and refusals (the triggers that make the ledger and
the log append-only).
"""

from __future__ import annotations

from coordinator.storage.log_tables import LOG_TABLES

MIGRATIONS: list[str] = [
    """
    CREATE TABLE providers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        uscc TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE enterprises (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        uscc TEXT NOT NULL UNIQUE,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE auditors (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        token_hash TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('enterprise', 'auditor', 'enrolment')),
        subject_id TEXT NOT NULL,
        uses_left INTEGER,
        expires_at_ms INTEGER,
        revoked INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE agents (
        agent_id TEXT PRIMARY KEY,
        provider_id TEXT NOT NULL REFERENCES providers(id),
        public_key BLOB NOT NULL,
        hostname TEXT NOT NULL,
        enrolled_at_ms INTEGER NOT NULL,
        ask_per_gpu_hour INTEGER,
        last_seen_ms INTEGER,
        penalty_ppm INTEGER NOT NULL DEFAULT 0,
        penalty_at_ms INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE gpus (
        uuid TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL REFERENCES agents(agent_id),
        model TEXT NOT NULL,
        memory_total_bytes INTEGER NOT NULL,
        first_seen_ms INTEGER NOT NULL
    );
    CREATE TABLE capacity_flags (
        id INTEGER PRIMARY KEY,
        agent_id TEXT NOT NULL,
        gpu_uuid TEXT,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        cleared_at_ms INTEGER
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        enterprise_id TEXT NOT NULL REFERENCES enterprises(id),
        idempotency_key TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        reason_detail TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        excluded_agents TEXT NOT NULL DEFAULT '[]',
        lease_id TEXT,
        created_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER,
        exit_code INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        UNIQUE (enterprise_id, idempotency_key)
    );
    CREATE INDEX jobs_by_state ON jobs(state);
    CREATE TABLE leases (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        agent_id TEXT NOT NULL REFERENCES agents(agent_id),
        gpu_uuids TEXT NOT NULL,
        price_per_gpu_hour INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        start_deadline_ms INTEGER NOT NULL,
        ends_at_ms INTEGER NOT NULL,
        state TEXT NOT NULL,
        stop_reason TEXT,
        started_at_ms INTEGER,
        ended_at_ms INTEGER,
        exit_code INTEGER,
        end_reason TEXT
    );
    CREATE INDEX leases_by_agent ON leases(agent_id, state);
    CREATE TABLE auction_rounds (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        record BLOB NOT NULL
    );
    CREATE TABLE job_logs (
        job_id TEXT NOT NULL,
        offset INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (job_id, offset)
    );
    """,
    """
    CREATE TABLE receipts (
        lease_id TEXT NOT NULL REFERENCES leases(id),
        seq INTEGER NOT NULL,
        agent_id TEXT NOT NULL,
        envelope BLOB NOT NULL,
        digest BLOB NOT NULL UNIQUE,
        issued_at_ms INTEGER NOT NULL,
        accepted_at_ms INTEGER NOT NULL,
        gpu_ms INTEGER NOT NULL,
        amount INTEGER NOT NULL,
        delta INTEGER NOT NULL,
        final INTEGER NOT NULL,
        acknowledgement BLOB NOT NULL,
        PRIMARY KEY (lease_id, seq)
    );
    CREATE TABLE receipt_rejections (
        id INTEGER PRIMARY KEY,
        agent_id TEXT NOT NULL,
        lease_id TEXT,
        seq INTEGER,
        rule TEXT NOT NULL,
        detail TEXT NOT NULL,
        envelope BLOB NOT NULL,
        at_ms INTEGER NOT NULL
    );
    CREATE INDEX receipt_rejections_by_lease ON receipt_rejections(lease_id);
    """,
    # 3: the ledger and what vouchers keep beside it (coordinator/billing/).
    # Transfers, postings, reservations, statements and period closes are written once and never
    # changed: corrections are new transfers, and the triggers make the database itself refuse
    # an UPDATE or DELETE. Account balances change only with the transfer that moves them.
    """
    CREATE TABLE ledger_accounts (
        id TEXT PRIMARY KEY,
        ledger TEXT NOT NULL CHECK (ledger IN ('cny', 'voucher_quota', 'credit')),
        kind TEXT NOT NULL,
        owner TEXT,
        flags TEXT NOT NULL DEFAULT '' CHECK (flags IN (
            '', 'debits_must_not_exceed_credits', 'credits_must_not_exceed_debits')),
        debits_pending INTEGER NOT NULL DEFAULT 0,
        debits_posted INTEGER NOT NULL DEFAULT 0,
        credits_pending INTEGER NOT NULL DEFAULT 0,
        credits_posted INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE ledger_transfers (
        seq INTEGER PRIMARY KEY,
        id BLOB NOT NULL UNIQUE CHECK (length(id) = 32),
        kind TEXT NOT NULL CHECK (kind IN ('posted', 'pending', 'post_pending', 'void_pending')),
        debit_account TEXT NOT NULL REFERENCES ledger_accounts(id),
        credit_account TEXT NOT NULL REFERENCES ledger_accounts(id),
        amount INTEGER NOT NULL CHECK (typeof(amount) = 'integer' AND amount > 0),
        code TEXT NOT NULL,
        cause TEXT NOT NULL,
        pending_id BLOB REFERENCES ledger_transfers(id),
        receipt_digest BLOB REFERENCES receipts(digest),
        at_ms INTEGER NOT NULL,
        CHECK (debit_account <> credit_account),
        CHECK ((kind IN ('post_pending', 'void_pending')) = (pending_id IS NOT NULL))
    );
    CREATE INDEX ledger_transfers_by_pending ON ledger_transfers(pending_id)
        WHERE pending_id IS NOT NULL;
    CREATE INDEX ledger_transfers_by_receipt ON ledger_transfers(receipt_digest)
        WHERE receipt_digest IS NOT NULL;
    CREATE INDEX ledger_open_pending ON ledger_transfers(debit_account) WHERE kind = 'pending';
    CREATE TABLE ledger_enterprises (
        enterprise_id TEXT PRIMARY KEY,
        uscc TEXT NOT NULL,
        opened_at_ms INTEGER NOT NULL
    );
    CREATE TABLE ledger_postings (
        receipt_digest BLOB PRIMARY KEY REFERENCES receipts(digest),
        enterprise_id TEXT NOT NULL,
        provider_id TEXT NOT NULL,
        enterprise_uscc TEXT NOT NULL,
        provider_uscc TEXT NOT NULL,
        lease_id TEXT NOT NULL,
        job_id TEXT NOT NULL,
        amount INTEGER NOT NULL CHECK (amount >= 0),
        voucher INTEGER NOT NULL CHECK (voucher >= 0),
        deferred INTEGER NOT NULL CHECK (deferred >= 0),
        reason TEXT NOT NULL,
        fiscal_year INTEGER NOT NULL,
        period TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        CHECK (voucher + deferred = amount)
    );
    CREATE INDEX ledger_postings_by_period ON ledger_postings(period, enterprise_id);
    CREATE INDEX ledger_postings_by_provider ON ledger_postings(provider_id, period);
    CREATE INDEX ledger_postings_by_job ON ledger_postings(job_id);
    CREATE TABLE ledger_reservations (
        job_id TEXT PRIMARY KEY,
        enterprise_id TEXT NOT NULL,
        max_cost INTEGER NOT NULL CHECK (max_cost >= 0),
        voucher_estimate INTEGER NOT NULL CHECK (voucher_estimate >= 0),
        amount INTEGER NOT NULL CHECK (amount >= 0),
        transfer_id BLOB REFERENCES ledger_transfers(id),
        at_ms INTEGER NOT NULL
    );
    CREATE TABLE ledger_period_closes (
        period TEXT PRIMARY KEY,
        closed_at_ms INTEGER NOT NULL
    );
    CREATE TABLE ledger_statements (
        period TEXT NOT NULL REFERENCES ledger_period_closes(period),
        party_kind TEXT NOT NULL CHECK (party_kind IN ('enterprise', 'provider')),
        party_id TEXT NOT NULL,
        total INTEGER NOT NULL,
        voucher INTEGER NOT NULL,
        deferred INTEGER NOT NULL,
        lines TEXT NOT NULL,
        issued_at_ms INTEGER NOT NULL,
        due_at_ms INTEGER,
        suspend_after_ms INTEGER,
        PRIMARY KEY (party_kind, party_id, period)
    );
    CREATE TRIGGER ledger_transfers_no_update BEFORE UPDATE ON ledger_transfers BEGIN
        SELECT RAISE(ABORT, 'ledger transfers are immutable; correct them with a new transfer');
    END;
    CREATE TRIGGER ledger_transfers_no_delete BEFORE DELETE ON ledger_transfers BEGIN
        SELECT RAISE(ABORT, 'ledger transfers are immutable; correct them with a new transfer');
    END;
    CREATE TRIGGER ledger_accounts_no_delete BEFORE DELETE ON ledger_accounts BEGIN
        SELECT RAISE(ABORT, 'ledger accounts are never deleted');
    END;
    CREATE TRIGGER ledger_accounts_fixed BEFORE UPDATE OF id, ledger, kind, owner, flags
        ON ledger_accounts BEGIN
        SELECT RAISE(ABORT, 'a ledger account keeps its id, ledger, kind, owner and flags');
    END;
    CREATE TRIGGER ledger_enterprises_no_update BEFORE UPDATE ON ledger_enterprises BEGIN
        SELECT RAISE(ABORT, 'ledger records are immutable');
    END;
    CREATE TRIGGER ledger_enterprises_no_delete BEFORE DELETE ON ledger_enterprises BEGIN
        SELECT RAISE(ABORT, 'ledger records are immutable');
    END;
    CREATE TRIGGER ledger_postings_not_in_closed_period BEFORE INSERT ON ledger_postings
        WHEN EXISTS (SELECT 1 FROM ledger_period_closes WHERE period = NEW.period) BEGIN
        SELECT RAISE(ABORT, 'usage cannot be posted into a closed period');
    END;
    CREATE TRIGGER ledger_postings_no_update BEFORE UPDATE ON ledger_postings BEGIN
        SELECT RAISE(ABORT, 'ledger records are immutable');
    END;
    CREATE TRIGGER ledger_postings_no_delete BEFORE DELETE ON ledger_postings BEGIN
        SELECT RAISE(ABORT, 'ledger records are immutable');
    END;
    CREATE TRIGGER ledger_reservations_no_update BEFORE UPDATE ON ledger_reservations BEGIN
        SELECT RAISE(ABORT, 'ledger records are immutable');
    END;
    CREATE TRIGGER ledger_reservations_no_delete BEFORE DELETE ON ledger_reservations BEGIN
        SELECT RAISE(ABORT, 'ledger records are immutable');
    END;
    CREATE TRIGGER ledger_period_closes_no_update BEFORE UPDATE ON ledger_period_closes BEGIN
        SELECT RAISE(ABORT, 'ledger records are immutable');
    END;
    CREATE TRIGGER ledger_period_closes_no_delete BEFORE DELETE ON ledger_period_closes BEGIN
        SELECT RAISE(ABORT, 'ledger records are immutable');
    END;
    CREATE TRIGGER ledger_statements_no_update BEFORE UPDATE ON ledger_statements BEGIN
        SELECT RAISE(ABORT, 'ledger records are immutable');
    END;
    CREATE TRIGGER ledger_statements_no_delete BEFORE DELETE ON ledger_statements BEGIN
        SELECT RAISE(ABORT, 'ledger records are immutable');
    END;
    """,
    # 4: the transparency log (coordinator.tlog)
    LOG_TABLES,
    # 5: one countersigned acknowledgement per accepted batch, which its receipts name
    """
    CREATE TABLE receipt_acknowledgements (
        id INTEGER PRIMARY KEY,
        agent_id TEXT NOT NULL,
        accepted_at_ms INTEGER NOT NULL,
        envelope BLOB NOT NULL
    );
    INSERT INTO receipt_acknowledgements (id, agent_id, accepted_at_ms, envelope)
        SELECT rowid, agent_id, accepted_at_ms, acknowledgement FROM receipts;
    CREATE TABLE receipts_batched (
        lease_id TEXT NOT NULL REFERENCES leases(id),
        seq INTEGER NOT NULL,
        agent_id TEXT NOT NULL,
        envelope BLOB NOT NULL,
        digest BLOB NOT NULL UNIQUE,
        issued_at_ms INTEGER NOT NULL,
        accepted_at_ms INTEGER NOT NULL,
        gpu_ms INTEGER NOT NULL,
        amount INTEGER NOT NULL,
        delta INTEGER NOT NULL,
        final INTEGER NOT NULL,
        acknowledgement_id INTEGER NOT NULL REFERENCES receipt_acknowledgements(id),
        PRIMARY KEY (lease_id, seq)
    );
    INSERT INTO receipts_batched
        SELECT lease_id, seq, agent_id, envelope, digest, issued_at_ms, accepted_at_ms, gpu_ms,
               amount, delta, final, rowid FROM receipts;
    DROP TABLE receipts;
    ALTER TABLE receipts_batched RENAME TO receipts;
    """,
    # 6: what operators change under a running coordinator (it polls admin_changes), agents'
    # revocation, the clock skew that replay protection needs across restarts, secret env
    # values kept apart from the job so they can be erased at its end, and open flags found fast
    """
    CREATE TABLE admin_changes (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('revoke_token', 'revoke_agent', 'clear_flag')),
        subject TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    );
    ALTER TABLE agents ADD COLUMN revoked_at_ms INTEGER;
    CREATE TABLE agent_request_floors (
        agent_id TEXT PRIMARY KEY REFERENCES agents(agent_id),
        skew_ms INTEGER NOT NULL
    );
    CREATE TABLE job_secrets (
        job_id TEXT NOT NULL REFERENCES jobs(id),
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (job_id, name)
    );
    CREATE INDEX capacity_flags_open ON capacity_flags(agent_id, gpu_uuid, kind)
        WHERE cleared_at_ms IS NULL;
    CREATE INDEX capacity_flags_by_agent ON capacity_flags(agent_id, id);
    CREATE TABLE coordinator_alive (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        at_ms INTEGER NOT NULL,
        stopped INTEGER NOT NULL
    );
    """,
    # 7: what a lease's billable window needs (shared.billing_window)
    """
    ALTER TABLE leases ADD COLUMN max_duration_ms INTEGER;
    ALTER TABLE leases ADD COLUMN stop_grace_ms INTEGER;
    ALTER TABLE leases ADD COLUMN stop_requested_at_ms INTEGER;
    """,
    # 8: who leads (coordinator.leadership): one row, its epoch the fencing token every write
    # of the leader carries (checked by the database on PostgreSQL), and each takeover kept
    """
    CREATE TABLE coordinator_leader (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        epoch INTEGER NOT NULL CHECK (epoch > 0),
        holder TEXT NOT NULL,
        url TEXT,
        session_pid INTEGER,
        renewed_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL
    );
    CREATE TABLE coordinator_takeovers (
        epoch INTEGER PRIMARY KEY,
        holder TEXT NOT NULL,
        url TEXT,
        previous_holder TEXT,
        reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    );
    """,
    # 9: each shell, copy and forwarded port relayed to a job (coordinator.relay): who, when,
    # how long, how many bytes, how it ended
    """
    CREATE TABLE relay_sessions (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        lease_id TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        enterprise_id TEXT NOT NULL,
        token_hash TEXT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER,
        bytes_in INTEGER NOT NULL DEFAULT 0,
        bytes_out INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        end_reason TEXT
    );
    CREATE INDEX relay_sessions_by_job ON relay_sessions(job_id, started_at_ms);
    CREATE INDEX relay_sessions_by_start ON relay_sessions(started_at_ms);
    """,
    # 10: where a lease's log begins in its job's log, so a requeued job's next lease adds
    # to the log instead of writing over its first bytes
    """
    ALTER TABLE leases ADD COLUMN log_base INTEGER;
    """,
]
