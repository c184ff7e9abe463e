"""The store's file format: its tables (``PRAGMA user_version`` 6) and the migration of any
earlier schema to them.

Schema::

    trials(key TEXT PRIMARY KEY,
           status TEXT  -- pending | running | done | failed | interrupted | stopped
                        -- (stopped: ended early by a search's scheduler, ASHA; never a table cell)
           config JSON, metrics JSON, history JSON, error TEXT, attempts INT,
           created REAL, started REAL, finished REAL  -- unix times
           wall_seconds REAL, info JSON,
           owner TEXT      -- the driver that claimed it: "host:pid:process start:PID namespace"
           heartbeat REAL  -- its last sign of life by the owner's clock (for people: never compared)
           lease_until REAL    -- the owner's clock + its lease (for people); NULL: no claim
           checkpoint TEXT     -- the latest checkpoint on the run's storage (path or URI) ...
           checkpoint_epoch INT,  -- ... and its epoch: the next run resumes there
           token INT       -- the fence: a new one each time the trial changes hands (claims.py)
           beats INT       -- the heartbeat counter its owner increments while it runs
           lease_s REAL)   -- the owner's lease: stale once beats stands still this long
    fences(last INT)   -- the last token handed out (one row; tokens are never used twice)
    memberships(grid, key, label, "column" JSON, seed, PRIMARY KEY(grid, key, label, "column"))
        -- grid is "<name>/<variant>" (table3/demo): which cells of an expansion use a trial
    runs(grid, variant, profile, sets JSON, path, started REAL, PRIMARY KEY(grid, variant))
        -- the last run of each grid expansion: `status`/`export` default to the latest
    forgotten(key, forgotten REAL, record JSON)   -- rows --rerun replaced
    warmups(wkey TEXT PRIMARY KEY, uri, epoch INT, leader, created REAL)
        -- shared warm-up checkpoints (TrialConfig.warmup): trials with the key start from uri
    searches(sid TEXT PRIMARY KEY, grid, label, "column" JSON, settings JSON, samples JSON,
             winner JSON, value REAL, updated REAL)
        -- a row's hyperparameter search in one column (raygap.search; store/searches.py): every
           sample asked for (params, trial keys, value, status) and, once the budget is spent,
           the winner's params (version 6)
"""
from __future__ import annotations

import sqlite3

STATUSES = ("pending", "running", "done", "failed", "interrupted", "stopped")
SCHEMA_VERSION = 6
TRIALS_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'interrupted', 'stopped')),
    config TEXT,
    metrics TEXT,
    history TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL,
    started REAL,
    finished REAL,
    wall_seconds REAL,
    info TEXT,
    owner TEXT,
    heartbeat REAL,
    lease_until REAL,
    checkpoint TEXT,
    checkpoint_epoch INTEGER,
    token INTEGER NOT NULL DEFAULT 0,
    beats INTEGER NOT NULL DEFAULT 0,
    lease_s REAL
);
"""
SCHEMA = TRIALS_SCHEMA + """
CREATE TABLE IF NOT EXISTS memberships (
    grid TEXT NOT NULL,
    key TEXT NOT NULL,
    label TEXT NOT NULL,
    "column" TEXT NOT NULL,
    seed INTEGER NOT NULL,
    PRIMARY KEY (grid, key, label, "column")
);
CREATE INDEX IF NOT EXISTS memberships_key ON memberships(key);
CREATE TABLE IF NOT EXISTS runs (
    grid TEXT NOT NULL,
    variant TEXT NOT NULL,
    profile TEXT,
    sets TEXT,
    path TEXT,
    started REAL,
    PRIMARY KEY (grid, variant)
);
CREATE TABLE IF NOT EXISTS forgotten (
    key TEXT NOT NULL,
    forgotten REAL NOT NULL,
    record TEXT
);
CREATE TABLE IF NOT EXISTS fences (
    last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS warmups (
    wkey TEXT PRIMARY KEY,
    uri TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    leader TEXT,
    created REAL
);
CREATE TABLE IF NOT EXISTS searches (
    sid TEXT PRIMARY KEY,
    grid TEXT NOT NULL,
    label TEXT NOT NULL,
    "column" TEXT NOT NULL,
    settings TEXT,
    samples TEXT,
    winner TEXT,
    value REAL,
    updated REAL
);
"""
TRIAL_COLUMNS = ("key", "status", "config", "metrics", "history", "error", "attempts", "created", "started",
                 "finished", "wall_seconds", "info", "owner", "heartbeat", "lease_until", "checkpoint",
                 "checkpoint_epoch", "token", "beats", "lease_s")
JSON_COLUMNS = ("config", "metrics", "history", "info")


def create(db: sqlite3.Connection) -> None:
    """Every table and index of the current schema (those missing), one statement at a time."""
    for stmt in SCHEMA.split(";"):
        if stmt.strip():
            db.execute(stmt)


def migrate(db: sqlite3.Connection) -> None:
    """Bring any earlier schema to SCHEMA_VERSION (call it inside one write transaction); every
    column of the old ``trials`` table is kept, those this raygap does not know included."""
    have = {r[0]: r[1] for r in db.execute("SELECT name, sql FROM sqlite_master WHERE type='table'")}
    info = {r[1]: r[2] for r in db.execute("PRAGMA table_info(trials)")}     # column -> declared type
    cols = list(info)
    # the status CHECK lacks a later status (interrupted: version 3; stopped: version 6): the table is rebuilt
    if "trials" in have and "'stopped'" not in (have["trials"] or ""):
        db.execute("ALTER TABLE trials RENAME TO trials_old")
        db.execute(TRIALS_SCHEMA)
        for col in cols:                 # columns this raygap does not know (a later one's, a user's) are kept
            if col not in TRIAL_COLUMNS:
                db.execute(f'ALTER TABLE trials ADD COLUMN "{col}" {info[col]}')
        keep = [c for c in TRIAL_COLUMNS if c in cols] + [f'"{c}"' for c in cols if c not in TRIAL_COLUMNS]
        db.execute(f"INSERT INTO trials ({', '.join(keep)}) SELECT {', '.join(keep)} FROM trials_old")
        db.execute("DROP TABLE trials_old")
    elif "trials" in have:
        for col, kind in (("owner", "TEXT"), ("heartbeat", "REAL"), ("lease_until", "REAL"),
                          ("checkpoint", "TEXT"), ("checkpoint_epoch", "INTEGER"),
                          ("token", "INTEGER NOT NULL DEFAULT 0"), ("beats", "INTEGER NOT NULL DEFAULT 0"),
                          ("lease_s", "REAL")):
            if col not in cols:
                db.execute(f"ALTER TABLE trials ADD COLUMN {col} {kind}")
    create(db)
    mcols = [r[1] for r in db.execute("PRAGMA table_info(memberships)")]
    if "col" in mcols and "column" not in mcols:          # stores written before the rename
        db.execute('ALTER TABLE memberships RENAME COLUMN col TO "column"')
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
