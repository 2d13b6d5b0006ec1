"""Where an evaluation run keeps its results: one SQLite file per run directory.

The tables are the report's interface and are read with plain SQL::

    meta(key TEXT PRIMARY KEY, value TEXT)        -- JSON values: benchmark, model, expert, seed, ns, ...
    pools(item_id TEXT PRIMARY KEY, samples TEXT, seconds REAL, tokens INTEGER)
    results(item_id, method, n, answer, gold, correct, confidence, category, tokens, expert_calls,
            seconds, modules, trace, official, PRIMARY KEY (item_id, method, n))
    probe(item_id, perturb, level, answer, gold, correct, confidence, nmlp, category,
          PRIMARY KEY (item_id, perturb, level))

Durability: WAL journal with ``synchronous=FULL``, so a committed transaction survives a killed
process (and a power cut). The runner writes an item's pool and all its result rows in *one*
transaction (:meth:`ResultStore.transaction`), so a kill never leaves half an item: on resume an item
is either complete or absent, and the primary keys make counting a row twice impossible.

``correct`` is the strict rule's verdict (:func:`catts_graph.task.is_correct`), ``official`` the
benchmark's own rule's (:mod:`catts_graph.eval.official`; NULL in rows written before it existed,
the column is added to such a store when it is opened).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from catts_graph.redaction import redact_strings

__all__ = ["DB_FILENAME", "SCHEMA", "MetaMismatch", "ResultStore", "RunDirectoryBusy", "db_path", "run_lock"]

DB_FILENAME = "results.sqlite"
"""The store's file name inside a run directory (``catts eval --run-dir``; ``catts report`` reads it)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS pools(
    item_id TEXT PRIMARY KEY, samples TEXT, seconds REAL, tokens INTEGER);
CREATE TABLE IF NOT EXISTS results(
    item_id TEXT, method TEXT, n INTEGER, answer TEXT, gold TEXT, correct INTEGER,
    confidence REAL, category TEXT, tokens INTEGER, expert_calls INTEGER, seconds REAL,
    modules TEXT, trace TEXT, official INTEGER,
    PRIMARY KEY (item_id, method, n));
CREATE TABLE IF NOT EXISTS probe(
    item_id TEXT, perturb TEXT, level REAL, answer TEXT, gold TEXT, correct INTEGER,
    confidence REAL, nmlp REAL, category TEXT,
    PRIMARY KEY (item_id, perturb, level));
"""

RESULT_COLUMNS = (
    "item_id",
    "method",
    "n",
    "answer",
    "gold",
    "correct",
    "confidence",
    "category",
    "tokens",
    "expert_calls",
    "seconds",
    "modules",
    "trace",
    "official",
)


StoreError = sqlite3.Error
"""What a damaged or foreign database file raises when a store is read (the SQLite error)."""


class MetaMismatch(ValueError):
    """A run directory already holds a run with other settings; the message lists the differences."""


class RunDirectoryBusy(ValueError):
    """Another process holds the run directory's lock; the message names the directory and process."""


def db_path(run_dir: str | Path) -> Path:
    """The store of the run in ``run_dir``."""
    return Path(run_dir) / DB_FILENAME


@contextmanager
def run_lock(run_dir: str | Path, writer: str = "eval") -> Iterator[Path]:
    """Hold ``run_dir`` for one ``writer`` (``catts eval``) while it runs; yields the lock file.

    Two evaluations into one directory would both draw the same items, at twice the cost, one's rows
    replacing the other's: the second is refused with :class:`RunDirectoryBusy` instead. The lock is
    an OS file lock (``flock``) on ``RUN_DIR/results.sqlite.<writer>.lock``: the OS releases it when
    the process ends, killed or not, so a resumed run never finds a stale one.
    """
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{DB_FILENAME}.{writer}.lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirectoryBusy(
                f"run_dir: {str(folder)!r} is in use by another {writer} (process {holder}); wait for it "
                "to finish, or use another --run-dir"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(descriptor)  # closing the descriptor releases the lock


class ResultStore:
    """An evaluation run's SQLite store; safe to share between threads and to reopen after a kill.

    Writes outside :meth:`transaction` commit one by one; inside it they commit together.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode (isolation_level=None): transactions are opened explicitly, never implicitly.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        self._lock = threading.RLock()
        self._depth = 0
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(SCHEMA)
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(results)")}
            if "official" not in columns:  # a store written before the official scorers
                self._conn.execute("ALTER TABLE results ADD COLUMN official INTEGER")

    # -- lifecycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[ResultStore]:
        """All writes inside commit together or not at all (nested uses join the outer one).

        Other threads' writes wait until it ends, so keep the work inside it to the writes.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._depth = 0

    def _rows(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        """Run one SQL statement and return its rows as dicts. Only this module speaks SQL: readers
        (the report, the probe, the organism's reproduction) use the methods below."""
        with self._lock:
            cursor = self._conn.execute(sql, parameters)
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # -- meta ---------------------------------------------------------------------------------------

    @property
    def meta(self) -> dict[str, Any]:
        """Every meta key with its JSON-decoded value."""
        with self._lock:
            rows = self._conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        return {key: json.loads(value) for key, value in rows}

    def set_meta(self, values: Mapping[str, Any]) -> None:
        """Write (or overwrite) meta keys; values must be JSON-serialisable."""
        with self.transaction():
            for key, value in values.items():
                self._conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    (key, json.dumps(value, sort_keys=True)),
                )

    def check_meta(self, expected: Mapping[str, Any]) -> None:
        """Store ``expected`` in a new run; in an existing one, raise :class:`MetaMismatch` unless the
        stored values of those keys are the same (a resumed run must continue the run it resumes).

        Only ``expected``'s keys are compared, so other writers' keys (``catts probe`` keeps its own
        settings under ``probe``) can share the run directory.
        """
        stored = self.meta
        if not any(key in stored for key in expected):
            self.set_meta(expected)
            return
        # Compare through JSON so that tuples and lists compare as stored.
        normalised = {k: json.loads(json.dumps(v, sort_keys=True)) for k, v in expected.items()}
        differences = [
            f"{key}: stored {stored.get(key)!r}, now {value!r}"
            for key, value in sorted(normalised.items())
            if stored.get(key) != value
        ]
        if differences:
            raise MetaMismatch(
                f"{self.path} holds a run with other settings ("
                + "; ".join(differences)
                + "). Resume it with the same settings, or use a new --run-dir."
            )

    # -- pools --------------------------------------------------------------------------------------

    def put_pool(
        self, item_id: str, samples: Sequence[Mapping[str, Any]], *, seconds: float, tokens: int
    ) -> None:
        """Store an item's sample records (drawn once at the largest N)."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO pools(item_id, samples, seconds, tokens) VALUES (?, ?, ?, ?)",
                (item_id, json.dumps(list(samples)), float(seconds), int(tokens)),
            )

    def get_pool(self, item_id: str) -> list[dict[str, Any]] | None:
        """An item's sample records, or None when none is stored."""
        with self._lock:
            row = self._conn.execute("SELECT samples FROM pools WHERE item_id = ?", (item_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    # -- results ------------------------------------------------------------------------------------

    def has(self, item_id: str, method: str, n: int) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM results WHERE item_id = ? AND method = ? AND n = ?", (item_id, method, n)
            ).fetchone()
        return row is not None

    def result_keys(self, item_id: str) -> set[tuple[str, int]]:
        """The (method, n) pairs stored for an item."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT method, n FROM results WHERE item_id = ?", (item_id,)
            ).fetchall()
        return {(method, n) for method, n in rows}

    def put_result(
        self,
        *,
        item_id: str,
        method: str,
        n: int,
        answer: str | None,
        gold: str,
        correct: bool,
        confidence: float,
        category: str | None,
        tokens: int,
        expert_calls: int,
        seconds: float,
        modules: Sequence[str] = (),
        trace: Sequence[Mapping[str, Any]] | None = None,
        official: bool | None = None,
    ) -> None:
        """Store one (item, method, N) row; storing the same key again replaces it, never duplicates.

        ``correct`` is the strict verdict, ``official`` the benchmark's own rule's (None: not scored).

        Every string in ``trace`` is stored redacted (:func:`catts_graph.redaction.redact`).
        """
        with self._lock:
            self._conn.execute(
                f"INSERT OR REPLACE INTO results({', '.join(RESULT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(RESULT_COLUMNS))})",
                (
                    item_id,
                    method,
                    int(n),
                    answer,
                    gold,
                    int(bool(correct)),
                    float(confidence),
                    category,
                    int(tokens),
                    int(expert_calls),
                    float(seconds),
                    json.dumps(list(modules)),
                    # The trace carries the experts' error texts: no credential is stored with them.
                    None if trace is None else json.dumps(redact_strings(list(trace))),
                    None if official is None else int(bool(official)),
                ),
            )

    def results(self, method: str | None = None) -> list[dict[str, Any]]:
        """Result rows as dicts (``modules`` and ``trace`` decoded; ``correct`` a bool, ``official``
        a bool or None), ordered by item, method, n."""
        where, parameters = ("WHERE method = ?", (method,)) if method is not None else ("", ())
        rows = self._rows(
            f"SELECT {', '.join(RESULT_COLUMNS)} FROM results {where} ORDER BY item_id, method, n", parameters
        )
        for row in rows:
            row["correct"] = bool(row["correct"])
            row["official"] = None if row["official"] is None else bool(row["official"])
            row["modules"] = json.loads(row["modules"]) if row["modules"] else []
            row["trace"] = json.loads(row["trace"]) if row["trace"] else None
        return rows

    def item_ids(self) -> list[str]:
        """Items with a stored pool, in id order."""
        return [row["item_id"] for row in self._rows("SELECT item_id FROM pools ORDER BY item_id")]

    # -- probe --------------------------------------------------------------------------------------

    def probe_keys(self) -> set[tuple[str, str, float]]:
        """The (item_id, perturbation, level) keys stored by ``catts probe``."""
        rows = self._rows("SELECT item_id, perturb, level FROM probe")
        return {(row["item_id"], row["perturb"], float(row["level"])) for row in rows}

    def put_probe(
        self,
        *,
        item_id: str,
        perturb: str,
        level: float,
        answer: str | None,
        gold: str,
        correct: bool,
        confidence: float,
        nmlp: float | None,
        category: str | None,
    ) -> None:
        """Store one probe row (the same key again replaces it); it commits on its own, so a kill
        loses at most the row being answered."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO probe(item_id, perturb, level, answer, gold, correct, "
                "confidence, nmlp, category) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item_id,
                    perturb,
                    float(level),
                    answer,
                    gold,
                    int(bool(correct)),
                    confidence,
                    nmlp,
                    category,
                ),
            )

    def probe_rows(self) -> list[dict[str, Any]]:
        """Probe rows in the order they were stored (``correct`` as a bool)."""
        rows = self._rows(
            "SELECT item_id, perturb, level, answer, gold, correct, confidence, nmlp, category "
            "FROM probe ORDER BY rowid"
        )
        for row in rows:
            row["correct"] = bool(row["correct"])
        return rows


def read_store(path: str | Path) -> ResultStore:
    """An existing store opened for reading; a missing file is a :class:`FileNotFoundError` naming
    it (opening a :class:`ResultStore` would create it)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"store_path: no database at {str(path)!r}")
    return ResultStore(path)
