"""sqlite_loop.py: an SQLite database open across checkpoints.

One connection kept open for the whole run (its page cache lives in the
program's memory, the pages on disk must match it). Each step inserts rows,
rewrites some in place and deletes one, in one transaction, then prints a
checksum of the whole table. At the end: PRAGMA integrity_check.

Usage: python3 sqlite_loop.py MODE [STEPS [PAUSE_MS]]
MODE: "wal" (write-ahead log) or "delete" (rollback journal).
"""

import hashlib
import sqlite3
import sys
import time


def payload(step, k):
    """Deterministic bytes, long enough to fill pages."""
    seed = hashlib.sha256(f"{step}/{k}".encode()).digest()
    return seed * 12


def table_digest(db):
    h = hashlib.sha256()
    for row in db.execute("SELECT id, step, v, payload FROM t ORDER BY id"):
        h.update(repr(row).encode())
    return h.hexdigest()[:16]


def main():
    mode = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    fixed = int(sys.argv[3]) if len(sys.argv) > 3 else -1
    db = sqlite3.connect("test.db", isolation_level=None)
    got = db.execute(f"PRAGMA journal_mode={mode}").fetchone()[0]
    print(f"journal {got}", flush=True)
    # A small cache: pages go back and forth between memory and the file.
    db.execute("PRAGMA cache_size=-64")
    # WAL: copy the log into the database every few pages, so that the
    # database file itself and the log's start are rewritten after a
    # checkpoint, as in a long run.
    db.execute("PRAGMA wal_autocheckpoint=8")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, step INTEGER, v INTEGER, payload BLOB)")
    running = hashlib.sha256()
    for step in range(1, steps + 1):
        db.execute("BEGIN")
        for k in range(8):
            db.execute("INSERT INTO t (step, v, payload) VALUES (?, ?, ?)", (step, k, payload(step, k)))
        # Rewrites in place: pages written before the checkpoint are
        # written again after it.
        db.execute("UPDATE t SET v = v + ?, payload = ? WHERE id % 5 = ?", (step, payload(step, 99), step % 5))
        db.execute("DELETE FROM t WHERE id = ?", (step * 3,))
        db.execute("COMMIT")
        digest = table_digest(db)
        running.update(digest.encode())
        rows = db.execute("SELECT count(*) FROM t").fetchone()[0]
        print(f"step {step} rows {rows} table {digest} running {running.hexdigest()[:16]}", flush=True)
        pause = fixed if fixed >= 0 else 50 + (step * 37) % 51
        time.sleep(pause / 1000)
    check = db.execute("PRAGMA integrity_check").fetchone()[0]
    print(f"integrity {check}", flush=True)
    db.close()
    print(f"final {running.hexdigest()}", flush=True)


if __name__ == "__main__":
    main()
