"""`bandit-router evaluate` / `export` on databases written by the real service code path, shadow policies and
their promotion (`POST /v1/policies/promote`), and the whole loop on a real `bandit-router serve` process."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from tools.loopback import loopback

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
    from fastapi.testclient import TestClient

from bandit_router.cli import app as cli_app
from bandit_router.config import Secrets, Settings
from bandit_router.log import rebuild_router
from bandit_router.service import create_app
from bandit_router.service.exceptions import Conflict
from bandit_router.service.writer import Promote

PAIR = ["gpt-4o-mini", "gpt-4o"]
QUALITY = {("code", "gpt-4o"): 0.8, ("code", "gpt-4o-mini"): 0.4, ("poem", "gpt-4o"): 0.5, ("poem", "gpt-4o-mini"): 0.6}
"""The world: the better model depends on the prompt's kind; fixed:gpt-4o is worth 0.65, fixed:gpt-4o-mini 0.5."""
PROMPTS = {
    "code": ["fix this python function that raises KeyError", "write a SQL query joining orders and users",
             "refactor the rust borrow checker error in main.rs"],
    "poem": ["write a short poem about the autumn sea", "a haiku about morning light on snow",
             "compose a sonnet about a lighthouse keeper"],
}
CLIENT_KEY = "client-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


def _ready(client: TestClient) -> TestClient:
    deadline = time.monotonic() + 10
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the service did not become ready"
        time.sleep(0.01)
    return client


def _rounds(post: Any, n: int, seed: int, headers: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """`n` route → feedback rounds (λ = 0, so reward = quality); returns (kind, chosen model) per round."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = "code" if rng.random() < 0.5 else "poem"
        prompt = PROMPTS[kind][int(rng.integers(3))] + f" #{i}"
        reply = post("/v1/route", json={"prompt": prompt, "models": PAIR, "cost_weight": 0.0}, headers=headers)
        assert reply.status_code == 200, reply.text
        decision = reply.json()
        quality = float(np.clip(QUALITY[kind, decision["model"]] + rng.normal(0, 0.05), 0, 1))
        fb = post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": quality}, headers=headers)
        assert fb.status_code == 200, fb.text
        out.append((kind, decision["model"]))
    return out


def _truth(rounds: list[tuple[str, str]], model: str) -> float:
    return float(np.mean([QUALITY[kind, model] for kind, _ in rounds]))


@pytest.fixture
def logged_db(tmp_path: Path) -> tuple[Path, list[tuple[str, str]]]:
    """A database written by the service (uniform random live policy, a linucb shadow), 500 rounds."""
    db = tmp_path / "service.db"
    settings = Settings(db=db, seed=3, policy="random", shadow_policies=("linucb",))
    with TestClient(create_app(settings)) as client:
        rounds = _rounds(_ready(client).post, 500, seed=11)
    return db, rounds


def test_evaluate_writes_the_schema_and_recovers_true_values(logged_db: tuple[Path, Any], tmp_path: Path) -> None:
    db, rounds = logged_db
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        cli_app, ["evaluate", "--db", str(db), "--candidates", "linucb:alpha=0.5", "--out", str(out), "fixed:gpt-4o"]
    )
    assert result.exit_code == 0, result.output
    assert "500 decisions with feedback evaluated" in result.output
    data = json.loads((out / "evaluation.json").read_text())
    assert (out / "evaluation.md").stat().st_size > 0 and (out / "evaluation.png").stat().st_size > 1000
    labels = {r["candidate"] for r in data["candidates"]}
    assert {"logged", "random", "fixed:gpt-4o", "fixed:gpt-4o-mini", "linucb:alpha=0.5", "shadow:linucb"} <= labels
    pairs = [(r["candidate"], r["estimator"]) for r in data["candidates"]]
    assert len(pairs) == len(set(pairs)) == len(labels) * 5
    for r in data["candidates"]:
        assert {"candidate", "estimator", "value", "ci_low", "ci_high", "ess", "n"} <= set(r)
        assert r["n"] == 500 and 0 < r["ess"] <= 500 + 1e-6
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    for model in PAIR:
        ips = next(r for r in data["candidates"] if r["candidate"] == f"fixed:{model}" and r["estimator"] == "ips")
        truth = _truth(rounds, model)
        assert abs(ips["value"] - truth) < 0.06, (model, ips, truth)
        assert ips["ci_low"] <= truth <= ips["ci_high"]
    # the logged policy is uniform: its estimate is the mean observed quality
    logged = next(r for r in data["candidates"] if r["candidate"] == "logged" and r["estimator"] == "ips")
    assert logged["value"] == pytest.approx(np.mean([QUALITY[k, m] for k, m in rounds]), abs=0.02)
    # the table lists candidates best first under DR, and names the best one whose interval it trusts
    dr = {r["candidate"]: r["value"] for r in data["candidates"] if r["estimator"] == "dr"}
    rows = [line.split("|")[1].strip() for line in result.output.splitlines() if "| dr |" in line]
    assert rows == sorted(dr, key=lambda c: -dr[c])
    assert "Best candidate with a trusted interval (dr): " in result.output


def test_a_log_of_one_feedback_is_counted_in_the_singular(tmp_path: Path) -> None:
    """The newcomer's first `evaluate`, after one round trip, said "1 decisions with feedback evaluated" and "only 1
    rounds to evaluate on"."""
    db = tmp_path / "service.db"
    with TestClient(create_app(Settings(db=db, seed=3))) as client:
        _rounds(_ready(client).post, 1, seed=11)
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "--no-baselines", "-C", "random"])
    assert result.exit_code == 0, result.output
    assert "1 decision with feedback evaluated (1 logged)" in result.output
    assert "only 1 round to evaluate on" in result.output


def test_evaluate_of_a_log_of_two_live_policies_says_so_and_takes_one_with_policy(tmp_path: Path) -> None:
    """A restart with another `policy`: `evaluate` compared every candidate with `logged`, the two policies' mix,
    without a word, and had no way to take the decisions of the policy live now (the promotion check weighs those
    alone). It warns, naming the policies, and `--policy NAME` evaluates on that policy's decisions, every decision
    still teaching the candidates as the service taught the new policy (it replays the whole log into it): the
    replayed `linucb` then decides on its decisions exactly as the live one did. A shadow added at the restart is
    evaluated there (without `--policy` the warning that leaves it out says so). Found driving `serve` through a
    policy change (hunt-ope)."""
    from bandit_router.evaluation import evaluate_log
    from bandit_router.evaluation.cli import open_store
    from bandit_router.evaluation.store_log import model_specs, with_feedback

    db = tmp_path / "service.db"
    for policy, shadows, n, seed in (("random", (), 12, 1), ("linucb", ("lints",), 10, 2)):
        with TestClient(create_app(Settings(db=db, seed=3, policy=policy, shadow_policies=shadows))) as client:
            _rounds(_ready(client).post, n, seed=seed)
    runner = CliRunner()
    both = runner.invoke(cli_app, ["evaluate", "--db", str(db), "--no-baselines", "-C", "random", "--estimators",
                                   "snips"])
    assert both.exit_code == 0, both.output
    assert "22 decisions with feedback were made by 2 live policies, in log order: random (12), linucb (10)" \
        in both.output and "evaluate --policy" in both.output
    assert "shadow 'lints' was not logged with every decision; not evaluated (--policy linucb evaluates it on that " \
           "live policy's decisions, which all logged it)" in both.output
    one = runner.invoke(cli_app, ["evaluate", "--db", str(db), "--no-baselines", "--estimators", "snips",
                                  "--policy", "linucb"])
    assert one.exit_code == 0, one.output
    assert "10 decisions with feedback evaluated (22 logged; live policy 'linucb' alone)" in one.output
    assert "live policies" not in one.output
    assert "| shadow:lints | snips | " in one.output
    unknown = runner.invoke(cli_app, ["evaluate", "--db", str(db), "--policy", "lints"])
    assert unknown.exit_code == 2
    assert "policy 'lints': none of the 22 decisions with feedback was made by that policy; theirs: random (12), " \
           "linucb (10)" in unknown.output
    store = open_store(db)
    try:
        records, _ = with_feedback(store)
        specs = model_specs(store, Settings().load_catalog())
    finally:
        store.close()
    evaluation = evaluate_log(records, ["linucb"], models=specs, estimators=("snips",), policy="linucb",
                              baselines=False, n_bootstrap=0)
    replayed = evaluation.replays["linucb"]
    assert replayed.evaluated.tolist() == [False] * 12 + [True] * 10
    columns = [replayed.models.index(m) for m in PAIR]
    for row, record in zip(replayed.target_pmf[12:], records[12:], strict=True):
        assert [row[i] for i in columns] == pytest.approx([dict(zip(record.decision.models, record.decision.pmf,
                                                                     strict=True))[m] for m in PAIR], abs=1e-9)


def test_evaluate_says_how_many_outcomes_are_the_default_reward(tmp_path: Path) -> None:
    """With `default_reward`, a decision whose window closed without feedback is learned with that quality (a
    `default` row). `evaluate` counted such decisions as decisions with feedback without a word ("8 decisions with
    feedback evaluated" where callers had rated 2; `/v1/stats` says 2): every estimate was pulled toward the
    default. They stay in (the policy learned them), with a warning giving their count. Found on a `serve` run
    with `default_reward` (hunt-ope)."""
    db = tmp_path / "service.db"
    with TestClient(create_app(Settings(db=db, seed=3, reward_window_s=0.3, default_reward=0.4))) as client:
        _ready(client)  # else a route may be a 503 "not ready (recovering)": 2 runs in 6 (review22scale)
        ids = [client.post("/v1/route", json={"prompt": f"question {i}"}).json()["decision_id"] for i in range(8)]
        for decision_id in ids[:2]:
            client.post("/v1/feedback", json={"decision_id": decision_id, "quality": 0.9})
        deadline = time.monotonic() + 10
        while client.get("/v1/stats").json()["feedback_by_status"].get("default", 0) < 6:
            assert time.monotonic() < deadline, "the windows did not close"
            time.sleep(0.05)
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "--no-baselines", "-C", "random",
                                          "--estimators", "snips"])
    assert result.exit_code == 0, result.output
    assert "8 decisions with feedback evaluated (8 logged)" in result.output
    assert "warning: 6 of the 8 decisions with feedback have none from a caller: their reward window closed and " \
           "the service learned its default_reward (quality 0.4) for them" in result.stderr


def test_evaluate_and_export_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli_app, ["evaluate", "--db", str(tmp_path / "none.db"), "-C", "random"])
    assert missing.exit_code == 2 and "no database" in missing.output
    db = tmp_path / "empty.db"
    with TestClient(create_app(Settings(db=db, seed=1))) as client:
        _ready(client)
    empty = runner.invoke(cli_app, ["evaluate", "--db", str(db), "-C", "random"])
    assert empty.exit_code == 1 and "no decision with learned feedback" in empty.output
    assert runner.invoke(cli_app, ["export", "--db", str(db), "--format", "csv"]).exit_code == 2


def _not_ours(tmp_path: Path, kind: str) -> Path:
    """A file `evaluate` and `export` must refuse: empty, another application's SQLite database, or not SQLite."""
    path = tmp_path / f"{kind}.db"
    if kind == "empty":
        path.touch()
    elif kind == "other":
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE notes (body TEXT)")
    elif kind == "other-meta":  # review: a `meta` table is common; it said `no such column: value`
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE meta (id INTEGER, name TEXT)")
    elif kind == "other-meta-kv":  # review: it said `no such table: decisions` (or model_events, sqlite_sequence)
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
            conn.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    else:
        path.write_text("not a database at all\n")
    return path


@pytest.mark.parametrize("kind", ["empty", "other", "other-meta", "other-meta-kv", "text"])
@pytest.mark.parametrize("command", [["evaluate", "-C", "random"], ["export"], ["evaluate", "--escalations"],
                                     ["export", "--escalations"]], ids=" ".join)
def test_a_file_that_is_not_a_service_database_is_named(tmp_path: Path, kind: str, command: list[str]) -> None:
    """`evaluate` and `export` on an empty file or another application's SQLite database said `no such table:
    decisions` (or `model_events`, `sqlite_sequence`); they say which file is not a bandit-router database and what
    was expected, exit status 2, and leave the file as it was (a file that is not SQLite was named already)."""
    db = _not_ours(tmp_path, kind)
    before = db.read_bytes()
    result = CliRunner().invoke(cli_app, [*command, "--db", str(db)])
    assert result.exit_code == 2, result.output
    if kind == "text":  # not SQLite at all: SQLite's own words, as before (test_faults.py)
        assert result.output.strip() == f"bandit-router {command[0]}: {db}: file is not a database"
    else:
        assert result.output.startswith(f"bandit-router {command[0]}: {db} is not a bandit-router database (")
        assert "expected the database that `bandit-router serve` writes" in result.output
    assert "no such table" not in result.output
    assert isinstance(result.exception, SystemExit)  # an exit status, not a traceback
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [db.name]


def test_a_database_of_a_newer_schema_is_refused_untouched(logged_db: tuple[Path, Any]) -> None:
    """`evaluate` and `export` read a database a newer bandit-router had migrated as if its tables meant what they
    mean here (`Store.schema_version` was only asked whether it is 0); they refuse it now, naming both versions,
    as the service's start does, and the file is left as it was."""
    from bandit_router.store import SCHEMA_VERSION, StoreError

    db, _ = logged_db
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.close()
    before, beside = db.read_bytes(), sorted(p.name for p in db.parent.iterdir())
    message = f"{db} has schema version {SCHEMA_VERSION + 1}; this bandit-router knows {SCHEMA_VERSION}"
    for command in (["export"], ["evaluate", "-C", "random"], ["export", "--escalations"],
                    ["evaluate", "--escalations"]):
        result = CliRunner().invoke(cli_app, [*command, "--db", str(db)])
        assert result.exit_code == 2, (command, result.output)
        assert result.output.startswith(f"bandit-router {command[0]}: {message}")
        assert isinstance(result.exception, SystemExit)
    with pytest.raises(StoreError, match=message), TestClient(create_app(Settings(db=db, seed=1))):
        pass  # the service's start (`Store.prepare`) refuses it too
    assert db.read_bytes() == before and sorted(p.name for p in db.parent.iterdir()) == beside


def test_an_unprepared_postgresql_database_is_named(pg_url: str) -> None:
    """The same for a PostgreSQL database no service has prepared (it said `relation "decisions" does not exist`)."""
    result = CliRunner().invoke(cli_app, ["export", "--db", pg_url])
    assert result.exit_code == 2, result.output
    assert "is not a bandit-router database (" in result.output and "does not exist" not in result.output


def test_evaluate_names_an_out_folder_it_cannot_create(logged_db: tuple[Path, Any], tmp_path: Path) -> None:
    """`--out` at a file was a FileExistsError traceback (exit status 1) after the whole evaluation had run."""
    db, _ = logged_db
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for out in (taken, taken / "eval"):
        result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "-C", "random", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert f"--out {out}: cannot create the folder" in result.output
        assert "with feedback evaluated" not in result.output  # refused before the replays


@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "-1"], "seed must be an integer >= 0, got -1"),
    (["-C", "linucb@seed=-1"], "candidate 'linucb@seed=-1': seed must be >= 0"),
    (["--estimators", ","], "estimators: give at least one of ips"),
])
def test_evaluate_refuses_a_negative_seed_and_no_estimator(logged_db: tuple[Path, Any], args: list[str],
                                                            message: str) -> None:
    """A negative seed was numpy's ValueError traceback (exit status 1); `--estimators ,` evaluated nothing and
    said that no estimate could be trusted (exit status 0)."""
    db, _ = logged_db
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "-C", "random", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_a_fixed_candidate_must_name_a_model_of_the_log(logged_db: tuple[Path, Any]) -> None:
    """`-C fixed:gpt-5` (no such model in the log) is refused with the log's models, not evaluated as the cheapest
    model under the name gpt-5."""
    db, _ = logged_db
    typo = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "-C", "fixed:gpt-5"])
    assert typo.exit_code == 2
    assert "candidate 'fixed:gpt-5': 'gpt-5' is not a model of the log; its models: gpt-4o-mini, gpt-4o" in typo.output
    assert "| fixed:gpt-5 |" not in typo.output


def test_export_dsjson(logged_db: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, rounds = logged_db
    out = tmp_path / "log.dsjson"
    result = CliRunner().invoke(cli_app, ["export", "--db", str(db), "--format", "dsjson", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(rounds) == 500
    with sqlite3.connect(db) as conn:
        rewards = dict(conn.execute("SELECT decision_id, reward FROM feedback WHERE learn = 1").fetchall())
    for event in lines[:50]:
        assert event["_label_cost"] == pytest.approx(-rewards[event["EventId"]])
        assert event["_label_probability"] == pytest.approx(0.5)
        assert event["_bandit_router"]["shadow_pmfs"]["linucb"]
    stdout = CliRunner().invoke(cli_app, ["export", "--db", str(db)])
    assert stdout.exit_code == 0 and len(stdout.stdout.splitlines()) == 500
    # `--out -` is standard output too: it wrote a file named `-` in the working directory, "wrote 500 events to -"
    monkeypatch.chdir(tmp_path)
    for escalations in ([], ["--escalations"]):
        dash = CliRunner().invoke(cli_app, ["export", "--db", str(db), "--out", "-", *escalations])
        assert dash.exit_code == 0 and not (tmp_path / "-").exists() and "wrote" not in dash.stderr, dash.output
        assert dash.stdout == CliRunner().invoke(cli_app, ["export", "--db", str(db), *escalations]).stdout
        assert escalations or len(dash.stdout.splitlines()) == 500


@pytest.mark.parametrize(("out", "escalations"), [("service.db", []), ("link.db", ["--escalations"]),
                                                   ("sub/../service.db-wal", []), ("service.db-server", [])])
def test_export_refuses_to_write_over_the_database_it_reads(logged_db: tuple[Path, Any], out: str,
                                                            escalations: list[str]) -> None:
    """`export --db router.db --out router.db` wrote the export beside the database and renamed it over it: exit
    status 0, "wrote 500 events", and the database was gone (`check`: "file is not a database"). `--out` naming
    the database (by a symlink or another spelling too) or a file SQLite keeps beside it is refused before
    anything is read, and the database is left as it was."""
    db, _ = logged_db
    (db.parent / "sub").mkdir()
    (db.parent / "link.db").symlink_to(db)
    before = db.read_bytes()
    result = CliRunner().invoke(cli_app, ["export", "--db", str(db), "--out", str(db.parent / out), *escalations])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"bandit-router export: --out {db.parent / out}: that is the database")
    assert "the export would replace it" in result.stderr
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["evaluate", "--escalations", "--mode", "frozen", "--config", "missing.toml"],
         "bandit-router evaluate: --escalations takes no --config, --mode: they are for policy candidates; leave them "
         "out, or leave out --escalations\n"),
        (["evaluate", "--escalations", "--no-baselines", "-C", "accept"],
         "bandit-router evaluate: --escalations takes no --baselines/--no-baselines: it is for policy candidates; "
         "leave it out, or leave out --escalations\n"),
        (["evaluate", "--escalations", "--estimators", "dr", "--reward-lambda", "4", "--seed", "1"],
         "bandit-router evaluate: --escalations takes no --estimators, --reward-lambda, --seed: they are for policy "
         "candidates; leave them out, or leave out --escalations\n"),
        (["export", "--escalations", "--include-unlabeled"],
         "bandit-router export: --escalations takes no --include-unlabeled/--no-include-unlabeled: it is for the "
         "decisions export; leave it out, or leave out --escalations\n"),
    ],
)
def test_options_that_escalations_does_not_read_are_refused(tmp_path: Path, command: list[str], message: str) -> None:
    """`evaluate --escalations` reads the chains, the rules (-C), --confidence and --out; it dropped --mode,
    --estimators, --reward-lambda, --seed, --no-baselines and --config without a word (a --config that does not
    exist too), as `export --escalations` dropped --include-unlabeled and --config. Given with it, they are
    refused before the database is opened, naming them."""
    result = CliRunner().invoke(cli_app, [*command, "--db", str(tmp_path / "router.db")])
    assert result.exit_code == 2, result.output
    assert result.stderr == message


def test_a_shadow_candidate_that_was_never_logged_is_named_with_the_shadows_that_were(
        logged_db: tuple[Path, Any]) -> None:
    """`-C shadow:linucbb` (a typo of the logged shadow `linucb`) said "decision '01a2…' has no pmf of shadow
    'linucbb'", as if that one decision lacked it; it says that no such shadow was logged, and which were."""
    db, _ = logged_db
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "-C", "shadow:linucbb"])
    assert result.exit_code == 2, result.output
    assert result.stderr == ("bandit-router evaluate: no shadow 'linucbb' (did you mean linucb?) was logged with these "
                             "decisions; logged: linucb\n")


def test_a_bogus_label_is_refused_also_with_nothing_to_export(logged_db: tuple[Path, Any]) -> None:
    """`export_escalations` and `export_dsjson` checked the label per event written, so with no escalation step (or
    no record) `label="bogus"` exported nothing and succeeded, where the same label with events was refused. Both
    refuse it before anything is read; `export --escalations --label bogus` and `export --label bogus` (refused
    before `--out` is opened since e28a018) say the same."""
    import io

    from bandit_router.errors import InvalidInput
    from bandit_router.evaluation import export_dsjson
    from bandit_router.evaluation.escalations import export_escalations
    from bandit_router.store import open_store

    db, _ = logged_db
    store = open_store(db)
    try:
        buffer = io.StringIO()
        assert export_escalations(store, buffer, label="quality") == 0  # this log has no escalation step
        with pytest.raises(InvalidInput, match="label must be 'reward' or 'quality', not 'bogus'"):
            export_escalations(store, buffer, label="bogus")
        with pytest.raises(InvalidInput, match="label must be 'reward' or 'quality', not 'bogus'"):
            export_dsjson([], buffer, label="bogus")
        assert buffer.getvalue() == ""
    finally:
        store.close()
    for command in (["export"], ["export", "--escalations"]):
        result = CliRunner().invoke(cli_app, [*command, "--db", str(db), "--label", "bogus"])
        assert result.exit_code == 2, result.output
        assert result.output == "bandit-router export: --label: expected reward or quality, not 'bogus'\n"


def test_export_into_a_closed_pipe_ends_quietly(logged_db: tuple[Path, Any]) -> None:
    """`bandit-router export --db … | head -n 1`: no traceback, no error message when the reader stops early."""
    import subprocess
    import sys

    db, _ = logged_db
    command = [sys.executable, "-m", "bandit_router.cli", "export", "--db", str(db)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # what `head -n 1` does after its line
        stderr = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert json.loads(first)["EventId"]
    assert stderr == "" and code == 0


def test_models_the_caller_named_are_not_decisions_without_feedback(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway call to a model the caller named is stored as a decision (policy `caller`) whose feedback is
    `unrouted`, never learned: `evaluate` took each for a decision without feedback and warned that every estimate
    may be biased, and counted them as logged."""
    from bandit_router.catalog import ModelSpec
    from benchmarks.fake_upstream import FakeUpstream, ServerThread

    monkeypatch.setenv("BANDIT_ROUTER_TEST_UPSTREAM_KEY", "sk-test-0123456789")
    upstream = FakeUpstream(seed=3)
    fake = ServerThread(upstream)
    upstream.url = fake.url
    names = ("fake-coder", "fake-writer")
    specs = tuple(ModelSpec(n, 1.0, 2.0, base_url=upstream.url + "/v1", api_key_env="BANDIT_ROUTER_TEST_UPSTREAM_KEY")
                  for n in names)
    config = tmp_path / "catalog.toml"
    config.write_text("".join(f'[[models]]\nname = "{n}"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n'
                              for n in names))
    db = tmp_path / "gateway.db"
    server = ServerThread(create_app(Settings(db=db, models=specs, seed=7)))
    try:
        url = server.wait_ready()
        statuses = []
        for i in range(60):
            body = {"model": "router" if i % 2 else "fake-writer", "messages": [{"role": "user", "content": f"#{i}"}]}
            reply = loopback.post(url + "/v1/chat/completions", json=body, timeout=30)
            assert reply.status_code == 200, reply.text
            rated = {"decision_id": reply.headers["x-decision-id"], "quality": 0.4 + 0.01 * i}
            statuses.append(loopback.post(url + "/v1/feedback", json=rated).json()["status"])
    finally:
        server.stop()
        fake.stop()
    assert statuses.count("unrouted") == 30 and statuses.count("applied") == 30
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "--config", str(config), "--estimators", "dr"])
    assert result.exit_code == 0, result.output
    assert "30 decisions with feedback evaluated (30 logged)" in result.output
    assert "have no feedback" not in result.output


def _log_then_remove_gamma(tmp_path: Path, n: int, pinned: int = 0) -> tuple[Path, Path]:
    """A service database of `n` rated decisions on alpha, beta and gamma (the first `pinned` allowing gamma only),
    and a catalog file without gamma."""
    from bandit_router.catalog import ModelSpec

    db = tmp_path / "removed.db"
    specs = (ModelSpec("alpha", 1.0, 2.0), ModelSpec("beta", 0.5, 1.0), ModelSpec("gamma", 3.0, 4.0))
    rng = np.random.default_rng(2)
    with TestClient(create_app(Settings(db=db, models=specs, seed=1, policy="random"))) as client:
        _ready(client)
        for i in range(n):
            body: dict[str, Any] = {"prompt": f"question {i}", "cost_weight": 0.0}
            if i < pinned:
                body["models"] = ["gamma"]
            decision = client.post("/v1/route", json=body).json()
            reply = client.post("/v1/feedback", json={"decision_id": decision["decision_id"],
                                                      "quality": float(rng.random())})
            assert reply.status_code == 200, reply.text
    config = tmp_path / "catalog.toml"
    config.write_text("".join(f'[[models]]\nname = "{m.name}"\ninput_usd_per_mtok = {m.input_usd_per_mtok}\n'
                              f'output_usd_per_mtok = {m.output_usd_per_mtok}\n' for m in specs[:2]))
    return db, config


def test_export_with_a_catalog_that_lost_a_model_of_the_log_says_so(tmp_path: Path) -> None:
    """`export --config` with a catalog file that no longer has a model of the log wrote its actions with their
    name alone (no tags, no `price`: other features than the other actions' for a VW model trained on the file)
    without a word; without `--config` it warned. It warns with `--config` too, naming the model. Found exporting
    the log of a `serve` run through a catalog change (hunt-ope)."""
    db, config = _log_then_remove_gamma(tmp_path, 4)
    out = tmp_path / "log.dsjson"
    result = CliRunner().invoke(cli_app, ["export", "--db", str(db), "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning: gamma: a model of the log without an entry in the catalog of --config (removed from the " \
           "catalog since?): its actions are exported with their name alone, without tags or price" in result.stderr
    actions = [a["a"] for line in out.read_text().splitlines() for a in json.loads(line)["c"]["_multi"]]
    assert {"model": "gamma"} in actions and all("price" in a for a in actions if a["model"] != "gamma")


def test_a_model_removed_from_the_catalog_file_does_not_stop_evaluate(tmp_path: Path) -> None:
    """`evaluate --config` with a catalog file that no longer has a model of the log stopped before any estimate
    ("the log mentions models without a catalog entry: ['gamma']"), the candidates' as well as the baselines'. It
    evaluates now: the candidates route among the catalog's models, fixed:gamma is read from the log, and a
    warning says so."""
    db, config = _log_then_remove_gamma(tmp_path, 60)
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "--config", str(config), "-C", "linucb",
                                          "--estimators", "ips,dr", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "60 decisions with feedback evaluated (60 logged), models: alpha, beta, gamma" in result.output
    assert "warning: models of the log without a catalog entry (removed from the catalog since?): gamma;" in (
        result.stderr)
    data = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    labels = {r["candidate"] for r in data["candidates"]}
    assert labels == {"logged", "random", "fixed:alpha", "fixed:beta", "fixed:gamma", "linucb"}
    assert all(r["n"] == 60 and r["value"] is not None for r in data["candidates"])


def test_evaluate_without_the_services_settings_says_to_give_them(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A service that ran with a catalog of its own (inline `[[models]]`, as the gateway's fake-upstream example
    does), evaluated as docs/evaluation.md writes it, `evaluate --db …` without `--config`: the shipped catalog has
    none of the log's models, and the refusal said only that the decisions "allowed only models without a
    catalog entry (…; a client named them)", a cause that was not this one. It now names the models and
    `--config`; with `--config` the same log evaluates. `export` said nothing: it warns now."""
    db, _ = _log_then_remove_gamma(tmp_path, 30)
    config = tmp_path / "service.toml"
    config.write_text("".join(f'[[models]]\nname = "{n}"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n'
                              for n in ("alpha", "beta", "gamma")), encoding="utf-8")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no ./bandit-router.toml
    monkeypatch.delenv("BANDIT_ROUTER_CONFIG", raising=False)
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "-C", "linucb", "--estimators", "dr"])
    assert result.exit_code == 2, result.output
    assert ("\nhint: alpha, beta, gamma: models of the log without an entry in the catalog read without --config"
            in result.stderr) and result.stderr.rstrip().endswith("give its settings: --config FILE"), result.stderr
    assert "allowed only models without a catalog entry (alpha, beta, gamma)" in result.stderr
    assert "a client named them" not in result.stderr, result.stderr  # the cause it guessed, not this one
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "--config", str(config), "-C", "linucb",
                                          "--estimators", "dr"])
    assert result.exit_code == 0, result.output
    assert "--config FILE" not in result.stderr
    for given in ([], ["--config", str(config)]):  # export writes their actions by name alone (no tags, no price)
        result = CliRunner().invoke(cli_app, ["export", "--db", str(db), "--out", str(tmp_path / "log.dsjson"), *given])
        assert result.exit_code == 0, result.output
        assert ("alpha, beta, gamma: models of the log without an entry" in result.stderr) is not bool(given)


def test_evaluate_without_config_names_one_cause_for_the_models_its_catalog_lacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `--config`, a catalog read (./bandit-router.toml here) that lacks some of the log's models: two
    warnings named gamma with two causes, "removed from the catalog since?" and "give the service's settings:
    --config FILE". The library's guess is dropped: one cause, the hint. And the hint was appended to every error of
    `evaluate`, a typo that --config cannot cure too: it follows only the refusals the missing models cause."""
    db, config = _log_then_remove_gamma(tmp_path, 40)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "bandit-router.toml").write_text(config.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.delenv("BANDIT_ROUTER_CONFIG", raising=False)
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "-C", "linucb", "--estimators", "ips"])
    assert result.exit_code == 0, result.output
    assert "warning: models of the log without a catalog entry: gamma; the candidates route" in result.stderr
    assert "warning: gamma: a model of the log without an entry in the catalog read without --config" in result.stderr
    assert "removed from the catalog since" not in result.stderr, result.stderr
    for typo in (["--estimators", "ips,bogus"], ["--mode", "sideways"], ["--confidence", "1.5"], ["-C", "nosuch"]):
        result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "-C", "linucb", *typo])
        assert result.exit_code == 2, result.output
        assert "--config" not in result.stderr and "gamma" not in result.stderr, (typo, result.stderr)
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "--config", "bandit-router.toml", "-C",
                                          "linucb", "--estimators", "ips"])  # the same catalog, given: the guess
    assert "(removed from the catalog since?): gamma" in result.stderr and "--config FILE" not in result.stderr


def test_a_decision_pinned_to_a_removed_model_leaves_no_candidate_out(tmp_path: Path) -> None:
    """One decision whose client allowed only gamma (`"models": ["gamma"]`), gamma then removed from the catalog
    file: random, fixed:alpha, fixed:beta and linucb were left out ("cannot decide on decision …"), exit 0, and the
    logged policy was named the best candidate. That decision is left out for every candidate now, with one
    warning, and all six are evaluated on the other 199."""
    db, config = _log_then_remove_gamma(tmp_path, 200, pinned=1)
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "--config", str(config), "-C", "linucb",
                                          "--estimators", "ips,dr", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "199 decisions with feedback evaluated (200 logged)" in result.output
    assert ("warning: 1 of the 200 decisions with feedback to evaluate on allowed only models without a catalog entry "
            "(gamma; a client named them)") in result.stderr
    assert "cannot decide" not in result.stderr
    data = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert {r["candidate"] for r in data["candidates"]} == {"logged", "random", "fixed:alpha", "fixed:beta",
                                                            "fixed:gamma", "linucb"}
    assert all(r["n"] == 199 for r in data["candidates"])


def test_evaluate_prices_each_model_as_the_service_does(tmp_path: Path) -> None:
    """The model events applied over the catalog in log order, as the service applies them: a catalog entry wins
    over an earlier run-time addition of its name (which evaluate's replays took instead), and a model retired and
    added again has its new prices."""
    from bandit_router.catalog import ModelSpec
    from bandit_router.evaluation.store_log import model_specs
    from bandit_router.store import open_store

    db = tmp_path / "priced.db"
    first = (ModelSpec("alpha", 1.0, 2.0), ModelSpec("beta", 0.5, 1.0))
    with TestClient(create_app(Settings(db=db, models=first, seed=1))) as client:
        _ready(client)
        added = {"name": "gamma", "input_usd_per_mtok": 3.0, "output_usd_per_mtok": 4.0}
        assert client.post("/v1/models", json=added).status_code == 201
        assert client.delete("/v1/models/alpha").status_code == 200
        again = {"name": "alpha", "input_usd_per_mtok": 9.0, "output_usd_per_mtok": 9.0}
        assert client.post("/v1/models", json=again).status_code == 201
    later = (*first, ModelSpec("gamma", 5.0, 6.0))  # gamma written into the catalog, at other prices
    with TestClient(create_app(Settings(db=db, models=later, seed=1))) as client:
        live = client.app.state.services.engine.router  # type: ignore[attr-defined]
        _ready(client)
        served = {m.name: (m.input_usd_per_mtok, m.output_usd_per_mtok) for m in live.models}
    assert served == {"alpha": (9.0, 9.0), "beta": (0.5, 1.0), "gamma": (5.0, 6.0)}
    store = open_store(db)
    try:
        found = model_specs(store, later)
    finally:
        store.close()
    assert {name: (m.input_usd_per_mtok, m.output_usd_per_mtok) for name, m in found.items()} == served


def test_evaluate_routes_to_no_model_retired_at_run_time(tmp_path: Path) -> None:
    """A model retired at run time (`DELETE /v1/models/c`) keeps its spec, to price its outcomes, and `evaluate`
    took it as routable: the replayed linucb routed to c, logged and the shadow that gave c probability were not
    marked ✗, and fixed:c (the best model of the log) was recommended. c is routable no more: linucb never routes
    to it, the three are marked and not recommended, and the warning names c as retired. Found reviewing eval24."""
    from bandit_router.catalog import ModelSpec

    db = tmp_path / "retired.db"
    three = (ModelSpec("a", 1.0, 2.0), ModelSpec("b", 1.0, 2.0), ModelSpec("c", 1.0, 2.0))
    settings = Settings(db=db, models=three, seed=3, policy="random", shadow_policies=("linucb",))
    with TestClient(create_app(settings)) as client:
        _ready(client)
        for i in range(36):
            if i == 24:
                assert client.delete("/v1/models/c").status_code == 200
            decision = client.post("/v1/route", json={"prompt": f"question {i}", "cost_weight": 0.0}).json()
            assert client.post("/v1/feedback", json={"decision_id": decision["decision_id"],
                                                     "quality": 0.9 if decision["model"] == "c" else 0.3}
                               ).status_code == 200
    config = tmp_path / "catalog.toml"  # the file still lists c: the service keeps it retired whatever it says
    config.write_text("".join(f'[[models]]\nname = "{m.name}"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n'
                              for m in three))
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "--config", str(config), "-C", "linucb",
                                          "--estimators", "dr", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    # linucb unmarked: its replay gives c no probability (c's column is checked: `unroutable_choices`)
    assert data["unroutable"] == {"logged": ["c"], "fixed:c": ["c"], "shadow:linucb": ["c"]}
    assert "warning: models of the log retired at run time (DELETE /v1/models; their specs still price their " \
           "outcomes): c;" in result.stderr
    assert "route = false" not in result.stderr
    best = next(line for line in result.output.splitlines() if "candidate" in line and "trusted" in line)
    assert "fixed:c" not in best.split("Not recommended")[0] and "Not recommended" in best
    assert {r["candidate"] for r in data["candidates"]} >= {"logged", "fixed:c", "shadow:linucb", "linucb"}
    assert all(r["cost_usd"] is not None for r in data["candidates"] if r["candidate"] == "fixed:c")


def test_evaluate_reads_a_configuration_the_service_starts_with_models_added_at_run_time(tmp_path: Path) -> None:
    """`evaluate --config` read the settings as `check --config` does, the catalog file alone: a configuration
    whose file has no routable model left (the log added one; the service starts with it) was refused. It takes the
    configuration as the service's start does (evaluate reads the models added at run time from the database)."""
    from bandit_router.catalog import ModelSpec

    db = tmp_path / "added.db"
    judge = ModelSpec("judge", 0.15, 0.6, route=False)
    with TestClient(create_app(Settings(db=db, models=(judge, ModelSpec("first", 0.1, 0.4)), seed=1))) as client:
        _ready(client)
        added = {"name": "gamma", "input_usd_per_mtok": 3.0, "output_usd_per_mtok": 4.0}
        assert client.post("/v1/models", json=added).status_code == 201
        assert client.delete("/v1/models/first").status_code == 200
        for _ in range(5):
            decision = client.post("/v1/route", json={"prompt": "hi"}).json()
            assert client.post("/v1/feedback", json={"decision_id": decision["decision_id"],
                                                     "quality": 0.5}).status_code == 200
    config = tmp_path / "br.toml"
    config.write_text("policy = 'fixed:gamma'\n[[models]]\nname = 'judge'\ninput_usd_per_mtok = 0.15\n"
                      "output_usd_per_mtok = 0.6\nroute = false\n", encoding="utf-8")
    result = CliRunner().invoke(cli_app, ["evaluate", "--db", str(db), "--config", str(config), "--estimators", "dr"])
    assert result.exit_code == 0, result.output
    assert "5 decisions with feedback evaluated (5 logged)" in result.output


# -- shadow policies and promotion ---------------------------------------------------------------------------------
def _settings(db: Path, **changes: Any) -> Settings:
    return Settings(db=db, seed=5, policy="random", shadow_policies=("linucb", "fixed:gpt-4o-mini"), **changes)


def test_shadow_pmfs_are_logged_and_reported(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path / "s.db"))) as client:
        rounds = _rounds(_ready(client).post, 5, seed=1)
        stats = client.get("/v1/stats").json()
    assert stats["live_policy"] == "random"
    assert [s["candidate"] for s in stats["shadows"]] == ["shadow:linucb", "shadow:fixed:gpt-4o-mini"]
    assert all(s["policy_version"] == 5 for s in stats["shadows"])  # they learned every feedback
    with sqlite3.connect(tmp_path / "s.db") as conn:
        rows = conn.execute(
            "SELECT d.models, s.pmfs, d.model FROM decisions d JOIN shadow_pmfs s USING (decision_id)"
        ).fetchall()
    assert len(rows) == len(rounds)
    for models, pmfs, chosen in rows:
        pmfs = json.loads(pmfs)
        assert sum(pmfs["linucb"]) == pytest.approx(1.0)
        assert pmfs["fixed:gpt-4o-mini"] == [1.0 if m == "gpt-4o-mini" else 0.0 for m in json.loads(models)]
        assert chosen in PAIR


def test_promotion_refused_without_evidence_then_forced(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path / "p.db"))) as client:
        _rounds(_ready(client).post, 6, seed=2)
        refused = client.post("/v1/policies/promote", json={"shadow": "linucb"})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "conflict" and "not promoted" in refused.json()["message"]
        message = refused.json()["message"]
        assert "only 6 decisions of the live policy with feedback logged the shadow's pmf (at least 10 needed)" in (
            message)
        assert client.post("/v1/policies/promote", json={"shadow": "nope"}).status_code == 404
        assert client.post("/v1/policies/promote", json={"shadow": "linucb", "force": "maybe"}).status_code == 422
        forced = client.post("/v1/policies/promote", json={"shadow": "linucb", "force": True})
        assert forced.status_code == 200, forced.text
        assert forced.json()["forced"] is True and forced.json()["previous"] == "random"
        stats = client.get("/v1/stats").json()
        assert stats["live_policy"] == "linucb"
        assert {s["name"] for s in stats["shadows"]} == {"random", "fixed:gpt-4o-mini"}
        assert client.post("/v1/route", json={"prompt": "hi", "models": PAIR}).json()["policy"].startswith("linucb")


def test_a_promotion_weighs_only_decisions_whose_pmfs_chose_among_models_routed_now(tmp_path: Path) -> None:
    """The pmfs logged while gpt-4o was routable give it probability (the live policy's and the shadow's); after a
    restart whose catalog marks gpt-4o `route = false`, the promotion check and the shadows panel weighed them as if
    those choices could still be made, by either policy (a 409 only when the bound fell short, a promotion when it
    passed). They are left out now, counted and warned of, and the check says how few are left; the decisions made
    since, among the models routed now, are the evidence. Found by eval24."""
    db = tmp_path / "r.db"
    with TestClient(create_app(_settings(db))) as client:
        _rounds(_ready(client).post, 24, seed=2)
    catalog = [dataclasses.replace(m, route=False) if m.name == "gpt-4o" else m
               for m in Settings(db=db).load_catalog()]
    with TestClient(create_app(_settings(db, models=tuple(catalog)))) as client:
        refused = _ready(client).post("/v1/policies/promote", json={"shadow": "linucb"})
        assert refused.status_code == 409, refused.text
        assert ("only 0 decisions of the live policy with feedback logged the shadow's pmf with neither pmf giving "
                "probability to a model this catalog no longer routes (at least 10 needed; 24 more gave one "
                "probability, a choice neither can make now)") in refused.json()["message"]
        for i in range(20):  # since the change: among the models routed now
            reply = client.post("/v1/route", json={"prompt": f"a question #{i}", "cost_weight": 0.0,
                                                   "models": ["gpt-4o-mini", "claude-haiku-4-5"]})
            assert reply.status_code == 200, reply.text
            assert client.post("/v1/feedback", json={"decision_id": reply.json()["decision_id"],
                                                     "quality": 0.6}).status_code == 200
        check = client.app.state.services.engine.promotion_check("linucb")  # type: ignore[attr-defined]
        panel = client.get("/v1/stats/shadows").json()
    assert (check["n"], check["left_out"]) == (panel["n"], panel["left_out"]) == (20, 24), (check, panel)
    said = ("24 of the 44 decisions with feedback that logged the pmfs compared are left out: there the live policy or "
            "the shadow gave probability to a model this catalog no longer routes")
    assert check["warnings"][0].startswith(said) and panel["warnings"][0].startswith(said), (check, panel)
    [linucb] = [e for e in panel["estimates"] if e["name"] == "linucb"]
    assert linucb["n"] == 20 and linucb["value"] is not None and linucb["reason"] == check["reason"]


def test_the_promotion_check_says_how_many_outcomes_are_the_default_reward(tmp_path: Path) -> None:
    """With `default_reward`, most decisions behind a promotion could be a closed window's default rather than a
    caller's rating, and the promotion's `check` did not say so (only `evaluate` warned). It carries the
    evaluation's warnings now, and the dashboard's shadows panel the same ones (checked again by eval24: both count
    the defaults as `evaluate` does). Found trying an item of session 22's note."""
    settings = _settings(tmp_path / "w.db", reward_window_s=0.3, default_reward=0.4)
    with TestClient(create_app(settings)) as client:
        _ready(client)
        ids = [client.post("/v1/route", json={"prompt": f"question {i}", "models": PAIR}).json()["decision_id"]
               for i in range(20)]  # the panel estimates from 20 decisions on
        for decision_id in ids[:3]:
            assert client.post("/v1/feedback", json={"decision_id": decision_id, "quality": 0.9}).status_code == 200
        deadline = time.monotonic() + 10
        while client.get("/v1/stats").json()["feedback_by_status"].get("default", 0) < 17:
            assert time.monotonic() < deadline, "the windows did not close"
            time.sleep(0.05)
        panel = client.get("/v1/stats/shadows").json()
        forced = client.post("/v1/policies/promote", json={"shadow": "linucb", "force": True})
        assert forced.status_code == 200, forced.text
        check = forced.json()["check"]
    assert check["n"] == panel["n"] == 20
    said = "17 of the 20 decisions with feedback have none from a caller"
    assert [w.split(":")[0] for w in check["warnings"] if "default_reward" in w] == [said]
    assert [w.split(":")[0] for w in panel["warnings"] if "default_reward" in w] == [said]


def test_promotion_with_evidence_is_durable(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    settings = _settings(db, checkpoint_interval=50)
    with TestClient(create_app(settings)) as client:
        _rounds(_ready(client).post, 400, seed=4)
        worse = client.post("/v1/policies/promote", json={"shadow": "fixed:gpt-4o-mini"})
        assert worse.status_code == 409, worse.text  # 0.5 does not beat random's 0.575
        reply = client.post("/v1/policies/promote", json={"shadow": "linucb"})
        assert reply.status_code == 200, reply.text
        check = reply.json()["check"]
        assert check["ok"] and not reply.json()["forced"] and check["shadow_ci_low"] > check["live_value"]
        _rounds(client.post, 30, seed=5)  # the promoted policy decides and everyone keeps learning
    with TestClient(create_app(settings)) as client:  # restored from the final checkpoint (a bundle)
        stats = _ready(client).get("/v1/stats").json()
        assert stats["live_policy"] == "linucb" and {s["name"] for s in stats["shadows"]} >= {"random"}
        live = client.app.state.services.engine.router  # type: ignore[attr-defined]
        assert client.app.state.services.engine.recovery["checkpoint_seq"] == 430  # type: ignore[attr-defined]
        assert np.allclose(live.weights(), rebuild_router(settings, live_store(client)).weights())
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM checkpoints")
    with TestClient(create_app(settings)) as client:  # no checkpoint: the whole log replayed, promote included
        stats = _ready(client).get("/v1/stats").json()
        assert stats["live_policy"] == "linucb"
        engine = client.app.state.services.engine  # type: ignore[attr-defined]
        assert engine.recovery["checkpoint_seq"] is None and engine.recovery["replayed"] == 430
        assert np.allclose(engine.router.weights(), rebuild_router(settings, engine.store).weights())


def test_a_restart_without_the_promoted_shadow_says_which_policy_is_live(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A promotion, then the shadow taken out of `shadow_policies` (a configuration tidied up): the stored promotion
    cannot apply and the configuration's policy is live again. The warning said only "no such shadow policy here;
    not applied"; it names the policy that is live and how to keep the promoted one. With the promoted one as the
    configuration's `policy`, nothing is wrong and nothing is warned."""
    db = tmp_path / "p.db"
    with TestClient(create_app(_settings(db))) as client:
        _rounds(_ready(client).post, 6, seed=2)
        assert client.post("/v1/policies/promote", json={"shadow": "linucb", "force": True}).status_code == 200
    with (caplog.at_level(logging.WARNING, logger="bandit_router"),
          TestClient(create_app(Settings(db=db, seed=5, policy="random"))) as client):
        assert _ready(client).get("/v1/stats").json()["live_policy"] == "random"
    (said,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("promote linucb")]
    assert "the live policy stays 'random'" in said and "set policy = 'linucb'" in said
    caplog.clear()
    with (caplog.at_level(logging.WARNING, logger="bandit_router"),
          TestClient(create_app(Settings(db=db, seed=5, policy="linucb"))) as client):
        assert _ready(client).get("/v1/stats").json()["live_policy"] == "linucb"
    assert not [r for r in caplog.records if r.getMessage().startswith("promote")]


def test_a_promotion_is_judged_against_the_live_policy_not_the_policies_before_it(tmp_path: Path) -> None:
    """After one promotion the log holds decisions of two live policies. The next shadow must beat the policy
    live now, on its own decisions: before, it was judged against the whole log's logged value, a mixture with the
    poor policy of before, and a shadow worse than the live policy was promoted."""
    world = {("code", "gpt-4o"): 0.9, ("code", "gpt-4o-mini"): 0.2, ("poem", "gpt-4o"): 0.5,
             ("poem", "gpt-4o-mini"): 0.7}  # random 0.575, fixed:gpt-4o 0.7, the best per kind 0.8

    def rounds(post: Any, n: int, seed: int) -> list[tuple[str, str]]:
        rng, out = np.random.default_rng(seed), []
        for i in range(n):
            kind = "code" if rng.random() < 0.5 else "poem"
            body = {"prompt": PROMPTS[kind][int(rng.integers(3))] + f" #{i}", "models": PAIR, "cost_weight": 0.0}
            decision = post("/v1/route", json=body).json()
            quality = float(np.clip(world[kind, decision["model"]] + rng.normal(0, 0.05), 0, 1))
            post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": quality})
            out.append((kind, decision["model"]))
        return out

    learner = "vw-egreedy:epsilon=0.2"  # explores enough for the overlap check to pass on its decisions
    settings = Settings(db=tmp_path / "m.db", seed=5, policy="random", shadow_policies=(learner, "fixed:gpt-4o"))
    with TestClient(create_app(settings)) as client:
        rounds(_ready(client).post, 600, seed=1)
        first = client.post("/v1/policies/promote", json={"shadow": learner})
        assert first.status_code == 200, first.text
        served = rounds(client.post, 200, seed=2)
        live_value = float(np.mean([world[kind, model] for kind, model in served]))
        assert live_value > 0.73  # the learner, live now, is better than fixed:gpt-4o's 0.7
        refused = client.post("/v1/policies/promote", json={"shadow": "fixed:gpt-4o"})
        assert refused.status_code == 409, refused.text
        assert "does not beat the live policy's" in refused.json()["message"]
        assert client.get("/v1/stats").json()["live_policy"] == learner
        check = client.post("/v1/policies/promote", json={"shadow": "random", "force": True}).json()["check"]
        assert check["n"] == 200  # the decisions the live policy made, with the previous one's pmf as a shadow


def test_the_live_policys_decisions_are_not_those_of_a_policy_of_the_same_name_with_other_settings(
    tmp_path: Path,
) -> None:
    """The promotion check reads the decisions whose `policy` is the live router's policy name. A configured policy
    with `policy_settings` was named by its kind alone, so after a restart with other settings (epsilon 0.9, then
    0.05) the decisions the old policy made were taken for the live one's: its logged value was the old policy's,
    the comparison this check is meant to avoid (review of hunt-pg-eval, 4040ce2). It is now named with its settings
    as a spec string names it (`vw-egreedy:epsilon=0.05`). Nothing the policy now live decided has feedback yet:
    the check has no decision of it."""
    def settings(epsilon: float) -> Settings:
        return Settings(db=tmp_path / "m.db", seed=5, policy="vw-egreedy", policy_settings={"epsilon": epsilon},
                        shadow_policies=("fixed:gpt-4o",))

    with TestClient(create_app(settings(0.9))) as client:
        _rounds(_ready(client).post, 30, seed=1)
    with TestClient(create_app(settings(0.05))) as client:
        engine = _ready(client).app.state.services.engine  # type: ignore[attr-defined]
        check = engine.promotion_check("fixed:gpt-4o")
        assert engine.router.policy.name == "vw-egreedy:epsilon=0.05"
    assert check["n"] == 0, check


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One database two replicas share: a SQLite file, or a PostgreSQL database."""
    return str(tmp_path / "shared.db") if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def test_two_replicas_promoting_at_once_do_not_replace_a_policy_unchecked(shared_db: str) -> None:
    """Replica B's promotion is checked against the live policy it knows (random) while replica A promotes another
    shadow (linucb), inside B's follow interval (100 ms). B's promote event was written anyway: linucb, which B's
    evidence never weighed, was replaced, and B answered 200 with previous = random; promoting linucb on B too
    said 404 "no shadow policy". Under the log's lock, after catching up, B's promotion is a 409 saying what
    changed, nothing is written, and both replicas keep linucb live. Two engines (writers, stores) on one
    database; B's check is held until A's promotion is answered, so the interleaving is the race's, every time."""
    settings = Settings(db=shared_db, seed=5, policy="random", shadow_policies=("linucb", "fixed:gpt-4o"))
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        _rounds(_ready(a).post, 200, seed=4)
        engine_b = b.app.state.services.engine  # type: ignore[attr-defined]
        _ready(b)
        a_promoted = threading.Event()
        checked = engine_b.promotion_check

        def check_then_wait(name: str) -> dict[str, Any]:
            result: dict[str, Any] = checked(name)
            assert a_promoted.wait(30), "replica A's promotion did not come back"
            return result

        engine_b.promotion_check = check_then_wait
        replies: dict[str, httpx.Response] = {}

        def promote_on_b(name: str) -> None:
            replies[name] = b.post("/v1/policies/promote", json={"shadow": name, "force": True})

        racers = [threading.Thread(target=promote_on_b, args=(name,)) for name in ("fixed:gpt-4o", "linucb")]
        for thread in racers:
            thread.start()
        first = a.post("/v1/policies/promote", json={"shadow": "linucb", "force": True})
        a_promoted.set()
        for thread in racers:
            thread.join(60)
        assert first.status_code == 200 and first.json()["previous"] == "random", first.text
        other, same = replies["fixed:gpt-4o"], replies["linucb"]
        assert other.status_code == 409, other.text
        assert other.json()["message"] == (
            "shadow 'fixed:gpt-4o' not promoted: the live policy changed from 'random' to 'linucb' (another promotion "
            "was written) while the promotion was checked against 'random'; ask again to check it against 'linucb'")
        assert same.status_code == 409, same.text
        assert "it is live already (another promotion of it was written while this one was checked)" in (
            same.json()["message"])
        _wait_for(lambda: engine_b.live_name == "linucb")
        assert a.get("/v1/stats").json()["live_policy"] == b.get("/v1/stats").json()["live_policy"] == "linucb"
        with live_store(a).read() as reader:
            promotions = [e.name for e in reader.model_events_after(0) if e.action == "promote"]
        assert promotions == ["linucb"]


def test_two_promotions_in_one_writer_batch_do_not_both_pass(tmp_path: Path) -> None:
    """Two promotions of one worker that reach the writer together run in one transaction, whose events are applied
    to the live policy only after the commit: both were checked against random, both events written, and the second
    replaced the first unchecked, answering 200 too. The batch now knows what it promoted: the second is a Conflict
    (409) and writes nothing; promoting the promoted policy again afterwards is still a 404 "no shadow policy"."""
    settings = Settings(db=tmp_path / "a.db", seed=5, policy="random", shadow_policies=("linucb", "fixed:gpt-4o"))
    with TestClient(create_app(settings)) as client:
        _rounds(_ready(client).post, 50, seed=4)
        engine = client.app.state.services.engine  # type: ignore[attr-defined]

        async def both() -> list[Any]:  # submitted in one event-loop turn: one writer batch
            return list(await asyncio.gather(engine.writer.submit(Promote("linucb", "random")),
                                             engine.writer.submit(Promote("fixed:gpt-4o", "random")),
                                             return_exceptions=True))

        first, second = client.portal.call(both)  # type: ignore[union-attr]
        assert first == "random"
        assert isinstance(second, Conflict), second
        assert str(second) == (
            "shadow 'fixed:gpt-4o' not promoted: the live policy changed from 'random' to 'linucb' (another promotion "
            "was written) while the promotion was checked against 'random'; ask again to check it against 'linucb'")
        with live_store(client).read() as reader:
            assert [e.name for e in reader.model_events_after(0) if e.action == "promote"] == ["linucb"]
        assert client.get("/v1/stats").json()["live_policy"] == "linucb"
        again = client.post("/v1/policies/promote", json={"shadow": "linucb", "force": True})
        assert again.status_code == 404 and "no shadow policy 'linucb'" in again.json()["message"], again.text


def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def live_store(client: TestClient) -> Any:
    return client.app.state.services.engine.store  # type: ignore[attr-defined]


def test_promotion_needs_an_admin_key(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "a.db", api_keys=Secrets((CLIENT_KEY,)), admin_keys=Secrets((ADMIN_KEY,)))
    with TestClient(create_app(settings)) as client:
        _ready(client)
        body = {"shadow": "linucb", "force": True}
        assert client.post("/v1/policies/promote", json=body).status_code == 401
        as_client = client.post("/v1/policies/promote", json=body, headers={"authorization": f"Bearer {CLIENT_KEY}"})
        assert as_client.status_code == 403
        as_admin = client.post("/v1/policies/promote", json=body, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert as_admin.status_code == 200, as_admin.text


# -- a real server process ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port, db = _free_port(), tmp_path / "served.db"
    script = Path(sys.executable).with_name("bandit-router")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bandit_router.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_ROUTER_")}
    env.update(BANDIT_ROUTER_SEED="9", BANDIT_ROUTER_POLICY="random", BANDIT_ROUTER_LOG_LEVEL="warning",
               BANDIT_ROUTER_SHADOW_POLICIES='["linucb"]')
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen([*command, "serve", "--port", str(port), "--db", str(db)], cwd=tmp_path, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, (tmp_path / "server.log").read_text()
                try:
                    if loopback.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.05)
            yield url, db
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def test_real_server_evaluate_then_promote(server: tuple[str, Path], tmp_path: Path) -> None:
    url, db = server
    with httpx.Client(base_url=url, timeout=30) as client:
        rounds = _rounds(client.post, 300, seed=21)
        out = tmp_path / "eval"
        script = Path(sys.executable).with_name("bandit-router")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "bandit_router.cli"]
        done = subprocess.run([*command, "evaluate", "--db", str(db), "-C", "fixed:gpt-4o", "--out", str(out),
                               "--estimators", "ips,snips,dr"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        data = json.loads((out / "evaluation.json").read_text())
        shadow = next(r for r in data["candidates"] if r["candidate"] == "shadow:linucb" and r["estimator"] == "dr")
        logged = next(r for r in data["candidates"] if r["candidate"] == "logged" and r["estimator"] == "dr")
        assert shadow["n"] == 300 and shadow["value"] > logged["value"]
        ips = next(r for r in data["candidates"] if r["candidate"] == "fixed:gpt-4o" and r["estimator"] == "ips")
        assert abs(ips["value"] - _truth(rounds, "gpt-4o")) < 0.07
        promoted = client.post("/v1/policies/promote", json={"shadow": "linucb"})
        assert promoted.status_code == 200, promoted.text
        stats = client.get("/v1/stats").json()
        assert stats["live_policy"] == "linucb" and stats["shadows"][0]["name"] == "random"


def test_shadow_policies_settings(tmp_path: Path) -> None:
    from bandit_router.config import ConfigError, load_settings

    env = {"BANDIT_ROUTER_SHADOW_POLICIES": '["linucb:alpha=0.5", "lints"]'}
    assert load_settings(None, env=env).shadow_policies == ("linucb:alpha=0.5", "lints")
    toml = tmp_path / "bandit-router.toml"
    toml.write_text('policy = "random"\nshadow_policies = ["linucb"]\n')
    assert load_settings(toml, env={}).shadow_policies == ("linucb",)
    for bad in ('["no-such-policy"]', '"linucb"', "[1]", '["linucb", "linucb"]', '["default"]'):
        with pytest.raises(ConfigError, match="shadow_policies"):
            load_settings(None, env={"BANDIT_ROUTER_SHADOW_POLICIES": bad})


def test_export_warns_only_of_models_of_the_events_it_writes(tmp_path: Path) -> None:
    """`export` warned that a model of the log without a catalog entry had "its actions exported with their name
    alone" when it was allowed only by decisions without feedback, which it does not write (without
    `--include-unlabeled`): no event held it. It warns of the models of the events it writes. Found reviewing
    hunt-ope (review22ope)."""
    from bandit_router.catalog import ModelSpec

    db = tmp_path / "unlabeled.db"
    specs = (ModelSpec("alpha", 1.0, 2.0), ModelSpec("beta", 0.5, 1.0), ModelSpec("gamma", 3.0, 4.0))
    with TestClient(create_app(Settings(db=db, models=specs, seed=1, policy="random"))) as client:
        _ready(client)
        for i in range(3):
            decision = client.post("/v1/route", json={"prompt": f"q {i}", "models": ["alpha", "beta"]}).json()
            client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.5})
        client.post("/v1/route", json={"prompt": "never rated"})  # allows gamma; no feedback
    config = tmp_path / "catalog.toml"
    config.write_text("".join(f'[[models]]\nname = "{m.name}"\ninput_usd_per_mtok = {m.input_usd_per_mtok}\n'
                              f'output_usd_per_mtok = {m.output_usd_per_mtok}\n' for m in specs[:2]))
    runner = CliRunner()
    labelled = runner.invoke(cli_app, ["export", "--db", str(db), "--config", str(config), "--out",
                                       str(tmp_path / "a.dsjson")])
    assert labelled.exit_code == 0, labelled.output
    assert "wrote 3 events" in labelled.stderr and "gamma" not in labelled.stderr
    every = runner.invoke(cli_app, ["export", "--db", str(db), "--config", str(config), "--include-unlabeled",
                                    "--out", str(tmp_path / "b.dsjson")])
    assert every.exit_code == 0, every.output
    assert "wrote 4 events" in every.stderr and "warning: gamma: a model of the log" in every.stderr
