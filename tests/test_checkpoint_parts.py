"""A large checkpoint is stored in parts, between the writer's batches, and is visible only once complete.

At 100 models the learned state is ~21 MB: packed, hashed and inserted in one transaction of the writer thread, a
save held every decision's commit (so every `/v1/route` reply) for 0.2–1 s (experiments/scale). Here `PART_BYTES`
is lowered so that the service's state with the default catalog (800 KB) takes a dozen parts."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_client import start_client

from bandit_router.config import Settings
from bandit_router.dbguard import check_database
from bandit_router.log import checkpoints, rebuild_router
from bandit_router.service.engine import Engine
from bandit_router.store import CommitOutcomeUnknown, SQLiteStore
from bandit_router.store.records import parted_tokens
from bandit_router.store.sqlite import _SQLiteTx
from tests.old_schema import as_previous_schema

PART = 64 * 1024


class Service:
    def __init__(self, settings: Settings) -> None:
        self.client = start_client(settings)

    @property
    def engine(self) -> Engine:
        engine: Engine = self.client.app.state.engine  # type: ignore[attr-defined]
        return engine

    def round(self, i: int) -> None:
        decision = self.client.post("/v1/route", json={"prompt": f"explain item {i} of the list, step by step"})
        assert decision.status_code == 200, decision.text
        reply = self.client.post("/v1/feedback", json={"decision_id": decision.json()["decision_id"],
                                                       "quality": (i * 37 % 100) / 100})
        assert reply.status_code == 200, reply.text

    def crash(self) -> None:
        """Stop without the final checkpoint: what `kill -9` leaves (a save under way stays where it was)."""
        self.engine.stop(checkpoint=False)
        self.client.__exit__(None, None, None)


def _until_a_checkpoint(service: Service, db: Path) -> int:
    """Rounds until a checkpoint is stored (at most 200); how many ran."""
    i = 0
    while not _stored(db):
        assert i < 200
        service.round(i)
        i += 1
    return i


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """The checkpoint's parts and rows and the decisions, in the order the writer stores them, with their bytes;
    `PART_BYTES` lowered to `PART`, and one piece of a save per writer round (`STEP_S` 0)."""
    monkeypatch.setattr(checkpoints, "PART_BYTES", PART)
    monkeypatch.setattr(checkpoints, "STEP_S", 0.0)  # one piece a step: decisions commit between any two
    seen: list[tuple[str, int]] = []
    part, row, decisions = _SQLiteTx.insert_checkpoint_part, _SQLiteTx.insert_checkpoint, _SQLiteTx.insert_decisions

    def insert_part(self: _SQLiteTx, token: str, n: int, data: bytes) -> None:
        seen.append(("part", len(data)))
        part(self, token, n, data)

    def insert_row(self: _SQLiteTx, **kwargs: Any) -> bool:
        seen.append(("checkpoint", len(kwargs["state"])))
        return row(self, **kwargs)

    def insert_decisions(self: _SQLiteTx, rows: Any) -> Any:
        seen.append(("decisions", len(rows)))
        return decisions(self, rows)

    monkeypatch.setattr(_SQLiteTx, "insert_checkpoint_part", insert_part)
    monkeypatch.setattr(_SQLiteTx, "insert_checkpoint", insert_row)
    monkeypatch.setattr(_SQLiteTx, "insert_decisions", insert_decisions)
    yield seen


def _stored(db: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(db) as conn:
        return [(int(r[0]), int(r[1])) for r in conn.execute("SELECT seq, length(state) FROM checkpoints ORDER BY seq")]


def _tokens(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {str(r[0]) for r in conn.execute("SELECT DISTINCT token FROM checkpoint_parts")}


def _named(db: Path) -> set[str]:
    """The parts' tokens the stored checkpoints name."""
    with sqlite3.connect(db) as conn:
        return parted_tokens(conn.execute("SELECT state FROM checkpoints").fetchall())


def _parts(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM checkpoint_parts").fetchone()[0])


def test_a_large_checkpoint_is_written_in_parts_between_decisions_and_restored(
    tmp_path: Path, writes: list[tuple[str, int]]
) -> None:
    """The state is written one part (at most `PART_BYTES`) per transaction, decisions commit between its parts,
    its row comes last (its `state` names the parts: no blob), and a restart restores it: the weights equal a
    replay of the whole log. Before the fix the whole state went in one `insert_checkpoint` of the writer."""
    settings = Settings(db=tmp_path / "parts.db", seed=5, checkpoint_interval=5)
    service = Service(settings)
    i = 0
    while not any(kind == "checkpoint" for kind, _ in writes):
        assert i < 200, __import__("collections").Counter(kind for kind, _ in writes)
        service.round(i)
        i += 1
    first = next(n for n, (kind, _) in enumerate(writes) if kind == "part")
    last = next(n for n, (kind, _) in enumerate(writes) if kind == "checkpoint")
    parts = [size for kind, size in writes[first:last] if kind == "part"]
    assert len(parts) >= 5 and max(parts) <= PART  # 800 KB: at least 5 parts, none over PART_BYTES
    assert writes[last][1] < 100  # the row names the parts
    assert sum(kind == "decisions" for kind, _ in writes[first:last]) >= 1  # decisions commit during the save
    seq = _stored(settings.db)[0][0]
    for j in range(i, i + 3):  # learned after the checkpoint: a restart replays these
        service.round(j)
    live = service.engine.router.weights()
    service.crash()

    restarted = Service(settings)
    assert restarted.engine.recovery["replayed"] >= 3 and restarted.engine.checkpointer.position[0] == seq
    assert np.array_equal(restarted.engine.router.weights(), live)
    store = SQLiteStore(settings.db)
    try:
        assert np.array_equal(rebuild_router(settings, store).weights(), live)
    finally:
        store.close()
    restarted.crash()
    report = check_database(settings.db)  # `bandit-router check` reads it back against its sha256
    assert report.last_good_checkpoint is not None and report.last_good_checkpoint["seq"] == seq


def test_a_save_cut_short_leaves_the_previous_checkpoint_and_its_parts_are_deleted(
    tmp_path: Path, writes: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that dies between two parts (here: stopped without its final checkpoint while a save is under way,
    which leaves the database as `kill -9` does: the parts committed so far, no row) leaves the previous checkpoint
    to restore; the parts no row names are ignored, then deleted by the next checkpoint stored, once older than
    `ABANDONED_AFTER_S` (another process's save under way may not be deleted: its row comes last)."""
    settings = Settings(db=tmp_path / "cut.db", seed=6, checkpoint_interval=5)
    service = Service(settings)
    i = _until_a_checkpoint(service, settings.db)
    before = len(writes)
    while not any(kind == "part" for kind, _ in writes[before:]):  # the next save has begun
        assert i < 400
        service.round(i)
        i += 1
    service.crash()
    kept = _stored(settings.db)
    abandoned = _tokens(settings.db) - _named(settings.db)
    assert len(kept) == 1 and len(abandoned) == 1  # its parts are there, its row is not

    monkeypatch.setattr("bandit_router.store.sqlite.ABANDONED_AFTER_S", 0.0)
    restarted = Service(settings)
    assert restarted.engine.checkpointer.position[0] == kept[0][0]  # the previous checkpoint, restored
    start = len(writes)
    while sum(kind == "checkpoint" for kind, _ in writes[start:]) < 1:
        assert i < 600
        restarted.round(i)
        i += 1
    restarted.crash()
    assert not abandoned & _tokens(settings.db)  # deleted with the checkpoint stored
    assert restarted.engine.checkpointer.position[0] == _stored(settings.db)[-1][0]


def test_an_old_database_is_migrated_and_its_checkpoint_in_one_row_still_restores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database of schema 8 (no `checkpoint_parts`) with a checkpoint in one row: the start migrates it, restores
    that checkpoint, and the next one is stored in parts and restored in turn."""
    settings = Settings(db=tmp_path / "old.db", seed=7, checkpoint_interval=5)
    monkeypatch.setattr(checkpoints, "PART_BYTES", 1 << 30)  # in one row, as schema 8 stored every checkpoint
    service = Service(settings)
    i = _until_a_checkpoint(service, settings.db)
    service.crash()
    old = _stored(settings.db)
    assert old[0][1] > PART  # in its row
    as_previous_schema(str(settings.db), "checkpoint_parts", 8)

    monkeypatch.setattr(checkpoints, "PART_BYTES", PART)
    monkeypatch.setattr(checkpoints, "STEP_S", 0.0)
    migrated = Service(settings)
    assert migrated.engine.checkpointer.position[0] == old[0][0]
    while len(_stored(settings.db)) < 2:
        assert i < 400
        migrated.round(i)
        i += 1
    live = migrated.engine.router.weights()
    migrated.crash()
    assert _stored(settings.db)[-1][1] < 100 and len(_named(settings.db)) == 1
    again = Service(settings)
    assert again.engine.checkpointer.position[0] == _stored(settings.db)[-1][0]
    assert np.array_equal(again.engine.router.weights(), live)
    again.crash()


def test_a_row_whose_commit_outcome_was_lost_keeps_its_parts(
    tmp_path: Path, writes: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint row's COMMIT answered `CommitOutcomeUnknown` (PostgreSQL: the connection lost at COMMIT) but
    had committed: the save is given up, and its parts stay, since the row names them. Before the fix the give-up
    deleted them: the newest checkpoint failed its checksum (with `checkpoints_kept = 1`, the only one)."""
    settings = Settings(db=tmp_path / "lost.db", seed=8, checkpoint_interval=5, checkpoints_kept=1)
    write, lost = SQLiteStore.write, []

    @contextlib.contextmanager
    def write_then_lose(self: SQLiteStore) -> Iterator[Any]:
        before = len(writes)
        with write(self) as tx:
            yield tx
        if not lost and any(kind == "checkpoint" for kind, _ in writes[before:]):
            lost.append(_stored(settings.db)[-1][0])
            raise CommitOutcomeUnknown("the connection was lost at COMMIT (committed, as it happens)")

    monkeypatch.setattr(SQLiteStore, "write", write_then_lose)
    service = Service(settings)
    i = 0
    while not lost:
        assert i < 200
        service.round(i)
        i += 1
    service.crash()
    assert _named(settings.db) <= _tokens(settings.db)  # the row's parts are there
    restarted = Service(settings)
    assert restarted.engine.checkpointer.position[0] == lost[0]  # restored: it passes its checksum
    restarted.crash()


def test_a_stop_during_a_save_the_log_moved_past_saves_the_state_once(
    tmp_path: Path, writes: list[tuple[str, int]]
) -> None:
    """A clean stop while a save is under way whose position the follower has learned past drops it (its parts
    deleted) and saves the state as it stands, once. Before, the stop wrote the rest of the old save's parts and its
    row, then all of the new one's (at 100 models, a second 21 MB before the process could exit)."""
    settings = Settings(db=tmp_path / "stop.db", seed=9, checkpoint_interval=5)
    service = Service(settings)
    i = 0
    while not any(kind == "part" for kind, _ in writes):
        assert i < 200
        service.round(i)
        i += 1
    service.round(i)  # learned after the capture
    engine = service.engine
    assert engine.checkpointer._saving is not None and engine.checkpointer._saving.position != engine.follower.position
    start = len(writes)
    engine.stop()
    service.client.__exit__(None, None, None)
    after = writes[start:]
    assert sum(kind == "checkpoint" for kind, _ in after) == 1  # one row: the state as it stands
    assert len(_tokens(settings.db)) == 1  # the dropped save's parts are deleted
    restarted = Service(settings)
    assert restarted.engine.recovery["replayed"] == 0  # the final checkpoint holds everything learned
    restarted.crash()


# -- bandit-router check on a corrupt checkpoint ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two databases with checkpoints at feedback seqs 5, 10 and 12 (the clean stop's): `parts` stores them in parts,
    `rows` in one row each (as schema 8 stored every checkpoint)."""
    root = tmp_path_factory.mktemp("check")
    stored: dict[str, Path] = {}
    with pytest.MonkeyPatch.context() as patch:
        for name, part in (("parts", PART), ("rows", 1 << 30)):
            patch.setattr(checkpoints, "PART_BYTES", part)
            service = Service(Settings(db=root / f"{name}.db", seed=10, checkpoint_interval=5))
            for i in range(12):
                service.round(i)
            service.client.__exit__(None, None, None)  # a clean stop: the final checkpoint, the WAL copied in
            stored[name] = root / f"{name}.db"
            assert [seq for seq, _ in _stored(stored[name])] == [5, 10, 12]
    return stored


NEWEST = "(SELECT id FROM checkpoints ORDER BY seq DESC LIMIT 1)"
TOKEN = "CAST(substr(state, 10, 32) AS TEXT)"
"""A parted checkpoint's token, read from its `state` (`records.parts_marker`)."""
NEWEST_TOKEN = f"(SELECT {TOKEN} FROM checkpoints WHERE id = {NEWEST})"


@pytest.mark.parametrize(("kind", "corrupt", "says"), [
    pytest.param("rows", f"UPDATE checkpoints SET state = zeroblob(1000) WHERE id = {NEWEST}",
                 "does not match its sha256", id="row-state-altered"),
    pytest.param("rows", f"UPDATE checkpoints SET sha256 = 'ab' || substr(sha256, 3) WHERE id = {NEWEST}",
                 "does not match its sha256", id="row-sha256-altered"),
    pytest.param("parts", f"DELETE FROM checkpoint_parts WHERE token = {NEWEST_TOKEN} AND n = 1",
                 "12 of its 13 parts stored", id="part-missing"),
    pytest.param("parts", f"UPDATE checkpoint_parts SET data = zeroblob(length(data)) WHERE token = {NEWEST_TOKEN} "
                 "AND n = 0", "does not match its sha256", id="part-altered"),
    pytest.param("parts", f"UPDATE checkpoints SET sha256 = 'ab' || substr(sha256, 3) WHERE id = {NEWEST}",
                 "does not match its sha256", id="parts-sha256-altered"),
])
def test_check_says_not_intact_when_a_checkpoint_fails_its_checksum(
    checked: dict[str, Path], tmp_path: Path, kind: str, corrupt: str, says: str
) -> None:
    """Each kind of corrupt checkpoint (in one row: its state or its sha256 altered; in parts: a part missing or
    altered, the row's sha256 altered) makes `check` exit 1 with a verdict that says so, the reason, and what a
    start restores instead. Before the fix `check` listed the checkpoint as failing its checksum and still said
    "verdict: intact", exit 0, for each of them (and for every checkpoint bad)."""
    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    db = tmp_path / "corrupt.db"
    db.write_bytes(checked[kind].read_bytes())
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        assert conn.execute(corrupt).rowcount == 1
    result = CliRunner().invoke(cli_app, ["check", "--db", str(db)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "last good checkpoint: id 2, feedback seq 10, policy version 10" in result.output
    assert "checkpoints failing their checksum: [3]" in lines
    detail = next(line for line in lines if line.startswith("  checkpoint 3 (feedback seq 12): "))
    assert says in detail and detail.endswith("restores checkpoint 2 (feedback seq 10) and replays the log after it")
    assert lines[-1] == ("verdict: NOT intact: checkpoints failing their checksum (a start skips them: see above): "
                         "restore a backup, or accept that and delete them: DELETE FROM checkpoints WHERE id IN (3) "
                         "(the docs: service → durability)")
    report = check_database(db)
    assert not report.ok and [c["good"] for c in report.checkpoints] == [False, True, True]


def test_check_says_what_a_start_without_a_good_checkpoint_loses(checked: dict[str, Path], tmp_path: Path) -> None:
    """Every checkpoint bad and the log's first rows deleted (as retention deletes what checkpoints hold): a start
    replays the whole log, which lacks them, and `check` says what is lost (JSON: `fallback` None, `lacks_seqs`)."""
    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    db = tmp_path / "lost.db"
    db.write_bytes(checked["parts"].read_bytes())
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE checkpoints SET sha256 = 'x'")
        conn.execute("DELETE FROM feedback WHERE seq <= 4")
    result = CliRunner().invoke(cli_app, ["check", "--db", str(db)])
    assert result.exit_code == 1, result.output
    assert "last good checkpoint: none" in result.output
    assert "DELETE FROM checkpoints WHERE id IN (3, 2, 1)" in result.output
    oldest = ("  checkpoint 1 (feedback seq 5): its state does not match its sha256; a start with its settings that "
              "comes to it restores none: it replays the whole log, which lacks feedback seqs 1–4 (deleted: "
              "retention, or by hand): what they taught is lost unless a backup holds a good checkpoint")
    assert oldest in result.output.splitlines()
    entries = check_database(db).checkpoints
    assert [(c["fallback"], c["lacks_seqs"]) for c in entries] == [(None, [1, 4])] * 3


def test_check_reads_the_checkpoints_in_one_snapshot(
    checked: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service that prunes a checkpoint (with its parts) while `check` reads them does not make the listed one
    read back as bad: `check` runs beside the service. Before, each checkpoint was read in its own transaction: the
    pruned one read as missing ("NOT intact" once a bad checkpoint counts)."""
    from bandit_router import dbguard

    db = tmp_path / "live.db"
    db.write_bytes(checked["parts"].read_bytes())
    first_seq = dbguard._first_feedback_seq

    def pruned_meanwhile(conn: sqlite3.Connection) -> int | None:  # after the list is read: the service prunes
        with contextlib.closing(sqlite3.connect(db)) as writer, writer:
            token = writer.execute(f"SELECT {TOKEN} FROM checkpoints WHERE seq = 5").fetchone()
            writer.execute("DELETE FROM checkpoints WHERE seq = 5")
            assert writer.execute("DELETE FROM checkpoint_parts WHERE token = ?", token).rowcount == 13
        return first_seq(conn)

    monkeypatch.setattr(dbguard, "_first_feedback_seq", pruned_meanwhile)
    report = check_database(db)
    assert report.ok and [c["seq"] for c in report.checkpoints if c["good"]] == [12, 10, 5], report.checkpoints


def test_check_passes_a_save_under_way_by(checked: dict[str, Path], tmp_path: Path) -> None:
    """A service storing a checkpoint while `check` runs: its committed parts, and the next one written in a
    transaction still open, have no `checkpoints` row yet (it comes last, in its own transaction), so no checkpoint
    reads back incomplete and the verdict stays intact. (A guard for the "NOT intact" verdict of a bad checkpoint:
    a running service must not trigger it.)"""
    db = tmp_path / "saving.db"
    db.write_bytes(checked["parts"].read_bytes())
    store = SQLiteStore(db)
    try:
        with store.write() as tx:
            tx.insert_checkpoint_part("under-way", 0, b"a part committed")
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as writer:
            writer.execute("BEGIN IMMEDIATE")  # the next part, its transaction open while `check` reads
            writer.execute("INSERT INTO checkpoint_parts (token, n, created_at, data) "
                           "VALUES ('under-way', 1, 0, x'00')")
            report = check_database(db)
            writer.execute("ROLLBACK")
    finally:
        store.close()
    assert report.ok and [c["good"] for c in report.checkpoints] == [True, True, True], report.checkpoints
