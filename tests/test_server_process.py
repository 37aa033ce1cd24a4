"""A real `bandit-router serve` process on a free 127.0.0.1 port: learning under concurrent clients, `kill -9`
in the middle of a feedback stream, several workers, and the docs' curl round trip."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from docs_pages import page, service_section
from named_fakes import serving

from bandit_router import __version__
from bandit_router.config import Settings
from bandit_router.log import build_router, fingerprint, rebuild_router
from bandit_router.service.workergate import NOT_READY
from bandit_router.store import SQLiteStore
from benchmarks.fake_upstream import JUDGE, FakeUpstream
from tools.loopback import loopback
from tools.serve_process import ServeProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SEED = 5
CODE = ["Fix this Python function: def mean(xs): return sum(xs) / len(x)",
        "Why does this JavaScript loop print 5 five times? for (var i = 0; i < 5; i++) setTimeout(() => log(i))",
        "Write a SQL query joining orders and customers, grouped by month",
        "Refactor this Go struct to use an interface for the storage backend",
        "Explain the segfault in this C code: char *p = NULL; strcpy(p, buf);"]
POEMS = ["Write a short poem about the sea at dawn",
         "Compose a haiku about autumn leaves falling in the rain",
         "Write a limerick about a cat who learned to fly",
         "A sonnet about a lighthouse keeper and the winter storms",
         "Write four rhyming lines about a city asleep under snow"]
PAIR = ["gpt-4o-mini", "claude-haiku-4-5"]
BEST = {"code": "gpt-4o-mini", "poem": "claude-haiku-4-5"}


class Server(ServeProcess):
    """`bandit-router serve` (the installed command, as `make run` uses it) with a fixed seed, in `folder`;
    always stopped at the end of the test (`servers`)."""

    def __init__(self, folder: Path, db: Path, *, workers: int = 1, env: dict[str, str] | None = None,
                 default_db: bool = False) -> None:
        script = Path(sys.executable).with_name("bandit-router")
        serve = [str(script)] if script.exists() else [sys.executable, "-m", "bandit_router.cli"]
        args = ([] if default_db else ["--db", str(db)]) + (["--workers", str(workers)] if workers > 1 else [])
        fixed = {"BANDIT_ROUTER_SEED": str(SEED), "BANDIT_ROUTER_LOG_LEVEL": "warning"}
        super().__init__(folder, serve, args, env={**fixed, **(env or {})})
        self.db = db

    def worker_pids(self, workers: int, timeout: float = 30.0) -> set[int]:
        """The pids of the workers that answered `/readyz` 200 until `workers` of them had (each must have recovered,
        not just the first to answer), or `timeout` passed."""
        ready: set[int] = set()
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5, headers={"connection": "close"}) as client:
            while len(ready) < workers and time.monotonic() < deadline:
                reply = client.get("/readyz")
                if reply.status_code == 200:
                    ready.add(reply.json()["pid"])
                time.sleep(0.02)
        return ready


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(**kwargs: Any) -> Server:
        server = Server(tmp_path, tmp_path / "router.db", **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _settings(db: Path, **changes: Any) -> Settings:
    return Settings(db=db, seed=SEED, **changes)


def _world_quality(kind: str, model: str, rng: np.random.Generator) -> float:
    """The better model for the prompt's kind scores 0.6, the other 0.4, with noise σ = 0.1."""
    base = 0.6 if BEST[kind] == model else 0.4
    return float(np.clip(base + rng.normal(0, 0.1), 0, 1))


def _rounds(url: str, n: int, seed: int, log: list[tuple[float, str, str]], stop: threading.Event) -> None:
    """`n` route → feedback rounds in a world where the better model depends on the prompt."""
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n):
            if stop.is_set():
                return
            kind = "code" if rng.random() < 0.5 else "poem"
            prompt = (CODE if kind == "code" else POEMS)[int(rng.integers(5))] + f" (#{seed}-{i})"
            decision = client.post("/v1/route", json={"prompt": prompt, "models": PAIR, "cost_weight": 0.0}).json()
            quality = _world_quality(kind, decision["model"], rng)
            reply = client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": quality})
            assert reply.status_code == 200 and reply.json()["status"] == "applied"
            log.append((time.monotonic(), decision["model"], kind))


def test_learning_under_concurrent_clients(servers: Callable[..., Server], tmp_path: Path) -> None:
    server = servers()
    server.wait_ready()
    log: list[tuple[float, str, str]] = []
    threads = [threading.Thread(target=_rounds, args=(server.url, 500, seed, log, threading.Event()))
               for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log) == 2000
    log.sort()
    better = [model == BEST[kind] for _, model, kind in log]
    first, last = np.mean(better[:100]), np.mean(better[-400:])
    print(f"share of the better model: first 100 rounds {first:.3f}, last 400 {last:.3f}")
    assert last > 0.9 and last > first + 0.1, (first, last)

    stats = loopback.get(server.url + "/v1/stats").json()
    with sqlite3.connect(tmp_path / "router.db") as conn:
        per_model = dict(conn.execute("SELECT model, COUNT(*) FROM decisions GROUP BY model").fetchall())
        learned = dict(conn.execute("SELECT model, COUNT(*) FROM feedback WHERE learn = 1 GROUP BY model").fetchall())
        quality = dict(conn.execute("SELECT model, AVG(quality) FROM feedback WHERE learn = 1 GROUP BY model"))
    assert stats["decisions"] == 2000 == sum(per_model.values())
    assert {m["model"]: m["decisions"] for m in stats["models"]} == per_model
    assert {m["model"]: m["feedback"] for m in stats["models"]} == learned
    for m in stats["models"]:
        assert m["mean_quality"] == pytest.approx(quality[m["model"]])
    assert stats["feedback_learned"] == 2000 == stats["policy_version"]
    assert stats["feedback_by_status"] == {"applied": 2000}


def test_kill_9_mid_stream_then_restart(servers: Callable[..., Server], tmp_path: Path) -> None:
    db = tmp_path / "router.db"
    # A 64 KiB WAL bound: the writer restarts the WAL about ten times before the kill (measured), so acknowledged
    # rows must survive restarts of the WAL file as well.
    env = {"BANDIT_ROUTER_CHECKPOINT_INTERVAL": "50", "BANDIT_ROUTER_WAL_MAX_BYTES": "65536"}
    server = servers(env=env)
    server.wait_ready()
    acked: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def stream(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                try:
                    decision = client.post("/v1/route", json={"prompt": POEMS[int(rng.integers(5))] + f" {seed}",
                                                              "models": PAIR})
                    body = {"decision_id": decision.json()["decision_id"], "quality": float(rng.random())}
                    reply = client.post("/v1/feedback", json=body)
                except httpx.HTTPError:
                    return
                if reply.status_code == 200:
                    acked.append((body["decision_id"], reply.json()["seq"], reply.json()["status"]))

    threads = [threading.Thread(target=stream, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill9()  # requests are in flight
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 300

    with sqlite3.connect(db) as conn:
        stored = {row[0]: (row[1], row[2]) for row in
                  conn.execute("SELECT decision_id, seq, status FROM feedback WHERE learn = 1")}
        total, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT decision_id) FROM feedback").fetchone()
        checkpoints = conn.execute("SELECT COUNT(*), MAX(seq) FROM checkpoints").fetchone()
    for decision_id, seq, status in acked:  # every acknowledged feedback is there, with its seq
        assert stored[decision_id] == (seq, status)
    assert total == distinct == len(stored)  # nothing stored twice
    assert checkpoints[0] >= 1 and checkpoints[1] <= max(seq for seq, _ in stored.values())

    restarted = servers(env=env)
    assert restarted.wait_ready() < 10.0
    recovery = loopback.get(restarted.url + "/readyz").json()["recovery"]
    assert recovery["checkpoint_seq"] == checkpoints[1]
    assert loopback.get(restarted.url + "/v1/stats").json()["policy_version"] == len(stored)

    after: list[tuple[float, str, str]] = []
    _rounds(restarted.url, 30, 99, after, threading.Event())
    restarted.terminate()  # a clean stop writes a checkpoint of the restored-then-updated policy
    settings = _settings(db, checkpoint_interval=50)
    store = SQLiteStore(db)
    try:
        with store.read() as reader:
            newest = reader.checkpoints(fingerprint(settings))[0]
            state = reader.checkpoint_state(newest.id)
            head = reader.head()
        assert (newest.seq, newest.version) == (head[0], len(stored) + 30)
        restored = build_router(settings)
        restored.restore(state)
        assert np.array_equal(restored.weights(), rebuild_router(settings, store).weights())
    finally:
        store.close()


def test_two_workers_share_the_log(servers: Callable[..., Server], tmp_path: Path) -> None:
    db = tmp_path / "router.db"
    server = servers(workers=2)
    server.wait_ready()
    ready = server.worker_pids(2)
    assert len(ready) == 2, "the second worker did not become ready"
    errors: list[str] = []

    def client_loop(seed: int) -> None:
        rng = np.random.default_rng(seed)
        # A new connection per request, so that both workers serve routes and feedback of the same decisions.
        with httpx.Client(base_url=server.url, timeout=30, headers={"connection": "close"}) as client:
            for i in range(40):
                kind = "code" if rng.random() < 0.5 else "poem"
                prompt = (CODE if kind == "code" else POEMS)[int(rng.integers(5))] + f" [{seed}.{i}]"
                decision = client.post("/v1/route", json={"prompt": prompt, "models": PAIR}).json()
                body = {"decision_id": decision["decision_id"],
                        "quality": _world_quality(kind, decision["model"], rng)}
                first = client.post("/v1/feedback", json=body)
                again = client.post("/v1/feedback", json=body)
                if (first.json().get("status"), again.json().get("status")) != ("applied", "duplicate"):
                    errors.append(f"{first.text} / {again.text}")

    threads = [threading.Thread(target=client_loop, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT decision_id) FROM feedback").fetchone() == (160, 160)
        assert [r[0] for r in conn.execute("SELECT seq FROM feedback ORDER BY seq")] == list(range(1, 161))
    versions: dict[int, int] = {}
    deadline = time.monotonic() + 15
    with httpx.Client(base_url=server.url, headers={"connection": "close"}) as client:
        while time.monotonic() < deadline:  # each worker (the kernel hands it new connections) follows the log
            stats = client.get("/v1/stats").json()
            versions[stats["pid"]] = stats["policy_version"]
            if len(versions) == 2 and set(versions.values()) == {160}:
                break
            time.sleep(0.02)
    assert len(versions) == 2 and set(versions.values()) == {160}, versions
    server.terminate()
    settings = _settings(db)
    store = SQLiteStore(db)
    try:
        with store.read() as reader:
            newest = reader.checkpoints(fingerprint(settings))[0]
            state = reader.checkpoint_state(newest.id)
        assert newest.seq == 160
        restored = build_router(settings)
        restored.restore(state)
        assert np.array_equal(restored.weights(), rebuild_router(settings, store).weights())
    finally:
        store.close()


def test_two_workers_report_the_judges_calls_and_spend_of_both(servers: Callable[..., Server], tmp_path: Path) -> None:
    """With `--workers 2` each worker's feedback judge scores the answers that worker served. `/v1/stats` from
    either reports the judge's calls, tokens and spend of both (stored in `judge_calls`), and under `process`
    its own, which add up to the total."""
    with serving(FakeUpstream(seed=3)) as fake:
        models = "".join(
            f'[[models]]\nname = "{name}"\ninput_usd_per_mtok = {price}\noutput_usd_per_mtok = {4 * price}\n'
            f'base_url = "{fake.url}/v1"\nroute = {"false" if name == JUDGE else "true"}\n\n'
            for name, price in (("fake-coder", 1.0), ("fake-writer", 0.5), (JUDGE, 0.2))
        )
        config = tmp_path / "judged.toml"
        config.write_text(f"{models}[judge]\njudge_model = \"{JUDGE}\"\njudge_sample_rate = 1.0\njudge_delay_s = 0\n")
        server = servers(workers=2, env={"BANDIT_ROUTER_CONFIG": str(config)})
        server.wait_ready()
        assert len(server.worker_pids(2)) == 2, "the second worker did not become ready"
        summaries: dict[int, dict[str, Any]] = {}
        sent = 0
        with httpx.Client(base_url=server.url, timeout=30, headers={"connection": "close"}) as client:
            deadline = time.monotonic() + 60
            while True:  # until both workers' judges scored some answers and every answer sent was judged
                if sent < 40 and (len(summaries) < 2 or min(s["scored"] for s in summaries.values()) == 0):
                    reply = client.post("/v1/chat/completions", json={
                        "model": "router", "messages": [{"role": "user", "content": f"{POEMS[sent % 5]} #{sent}"}]})
                    assert reply.status_code == 200, reply.text
                    sent += 1
                stats = client.get("/v1/stats").json()
                summaries[stats["pid"]] = stats["judge"]
                done = [s for s in summaries.values() if s["calls"] == sent]
                if len(done) == 2 and sum(s["scored"] for s in done) == sent and all(s["scored"] for s in done):
                    break
                assert time.monotonic() < deadline, (sent, summaries)
    first, second = summaries.values()
    own = first["process"]["spend_usd"] + second["process"]["spend_usd"]
    assert first["process"]["spend_usd"] > 0 and second["process"]["spend_usd"] > 0
    for summary in (first, second):
        assert summary["calls"] == sent and summary["spend_usd"] == pytest.approx(own, rel=1e-9)
        assert summary["input_tokens"] == first["process"]["input_tokens"] + second["process"]["input_tokens"]
    with sqlite3.connect(tmp_path / "router.db") as conn:
        stored = conn.execute("SELECT COUNT(*), SUM(cost_usd) FROM judge_calls").fetchone()
    assert stored[0] == sent and stored[1] == pytest.approx(own, rel=1e-9)


@pytest.mark.parametrize("changes", [("DELETE", "POST"), ("DELETE", "POST", "DELETE")])
def test_serve_restarts_with_a_judge_model_retired_and_added_back(servers: Callable[..., Server], tmp_path: Path,
                                                                  changes: tuple[str, ...]) -> None:
    """A catalog file's judge model (its own `base_url`) retired and added back by `POST /v1/models` (which gives
    no upstream) has a live spec without `base_url`; serve's pre-check judged the upstream from it and refused the
    restart ("judge_model: 'fake-judge' has no upstream"), though the gateway calls the model with the file's
    spec, as it did until the stop. The pre-check takes the spec the gateway calls: the file's entry first."""
    with serving(FakeUpstream(seed=3)) as fake:
        models = "".join(f'[[models]]\nname = "{name}"\ninput_usd_per_mtok = 0.1\noutput_usd_per_mtok = 0.2\n'
                         f'base_url = "{fake.url}/v1"\n' for name in ("fake-coder", "fake-writer", JUDGE))
        config = tmp_path / "judged.toml"
        config.write_text(f'{models}[judge]\njudge_model = "{JUDGE}"\njudge_sample_rate = 1.0\njudge_delay_s = 0\n')
        env = {"BANDIT_ROUTER_CONFIG": str(config)}
        server = servers(env=env)
        server.wait_ready()
        for change in changes:
            reply = (loopback.delete(f"{server.url}/v1/models/{JUDGE}") if change == "DELETE" else
                     loopback.post(server.url + "/v1/models", json={"name": JUDGE, "input_usd_per_mtok": 0.1,
                                                                  "output_usd_per_mtok": 0.2}))
            assert reply.status_code in (200, 201), reply.text
        server.terminate()
        server = servers(env=env)
        server.wait_ready()
        judged = fake.calls[JUDGE]
        reply = loopback.post(server.url + "/v1/chat/completions", timeout=30, json={
            "model": "router", "messages": [{"role": "user", "content": POEMS[0]}]})
        assert reply.status_code == 200, reply.text
        deadline = time.monotonic() + 30
        while fake.calls[JUDGE] == judged:  # the judge calls its model with the file's spec
            assert time.monotonic() < deadline, dict(fake.calls)
            time.sleep(0.05)


def test_every_worker_logs_its_start_and_recovery_in_the_servers_format(servers: Callable[..., Server],
                                                                         tmp_path: Path) -> None:
    """With `--workers 2` each worker is a fresh process: it used to log with no handler of its own, so its start
    line and its recovery (INFO) were lost and its warnings came out bare, unlike `serve` with one worker. The start
    line names the workers and the version."""
    server = servers(workers=2, env={"BANDIT_ROUTER_LOG_LEVEL": "info"})
    server.wait_ready()
    pids = server.worker_pids(2)
    assert len(pids) == 2, "the second worker did not become ready"
    server.terminate()
    lines = (tmp_path / f"server-{server.port}.log").read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "  # UTC (test_observability checks the zone)
    recovered = [line for line in lines if re.match(stamp + r"INFO bandit_router\.service: recovered: ", line)]
    started = [line for line in lines if re.match(stamp + r"INFO bandit_router\.service: bandit-router: db=", line)]
    assert len(recovered) == 2 and len(started) == 2, "\n".join(lines)
    assert all(": recovered: no checkpoint yet, 0 feedbacks replayed" in line for line in recovered), recovered  # not
    # "checkpoint at seq None", which a newcomer's first start read as a fault
    assert all(" synchronous=normal " in line for line in started)  # SQLite's durability setting, in force
    assert all(line.endswith(f" workers=2 version={__version__}") for line in started), started  # which build,
    # how many processes: before, an operator reading the log had neither
    warned = [line for line in lines if "not called by the gateway" in line]  # no key variable is set here
    assert warned and all(re.match(stamp + r"WARNING bandit_router\.gateway: ", line) for line in warned), warned


def test_the_default_log_level_writes_no_line_per_request(servers: Callable[..., Server], tmp_path: Path) -> None:
    """At the default level (`info`) the log says what the service does, not each request: httpx logged one INFO
    line per upstream call (`HTTP Request: POST …/v1/chat/completions "HTTP/1.1 200 OK"`), the gateway's and its
    judge's: 1.7 KB/s at a steady 30 requests a second, a third of them the gateway's (a 21-minute soak); `debug`
    shows them."""
    with serving(FakeUpstream(seed=3)) as fake:
        models = "".join(
            f'[[models]]\nname = "{name}"\ninput_usd_per_mtok = 0.1\noutput_usd_per_mtok = 0.2\n'
            f'base_url = "{fake.url}/v1"\nroute = {"false" if name == JUDGE else "true"}\n\n'
            for name in ("fake-coder", "fake-writer", JUDGE)
        )
        config = tmp_path / "judged.toml"
        config.write_text(f'{models}[judge]\njudge_model = "{JUDGE}"\njudge_sample_rate = 1.0\njudge_delay_s = 0\n')
        for level in ("info", "debug"):
            server = servers(env={"BANDIT_ROUTER_CONFIG": str(config), "BANDIT_ROUTER_LOG_LEVEL": level})
            server.wait_ready()
            judged = fake.calls[JUDGE]
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for i in range(20):
                    reply = client.post("/v1/chat/completions", json={
                        "model": "router", "messages": [{"role": "user", "content": f"{POEMS[i % 5]} #{i}"}]})
                    assert reply.status_code == 200, reply.text
                deadline = time.monotonic() + 30
                while fake.calls[JUDGE] < judged + 20:  # every answer judged: 40 upstream calls in all
                    assert time.monotonic() < deadline, dict(fake.calls)
                    time.sleep(0.05)
            server.terminate()
            calls = [line for line in server.logpath.read_text().splitlines() if "HTTP Request:" in line]
            if level == "info":
                assert calls == [], calls[:3]
            else:  # each call, the judge's too (a judge call cut short by the stop is not logged)
                assert len(calls) >= 20, calls


def test_workers_that_start_slowly_are_not_killed_as_hung(servers: Callable[..., Server], tmp_path: Path) -> None:
    """On a busy machine (2 shared cores at load 10) importing bandit_router alone took 4 s, and uvicorn kills a worker
    that leaves its health check unanswered for 5 s, counted from its spawn: `--workers 2` logged "Child process
    [...] died" and started workers again and again. Here each worker takes 7 s to start (a sitecustomize that
    sleeps in spawned processes only); both become ready and none is killed."""
    slow = tmp_path / "slow-start"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import sys\nimport time\n\nif '--multiprocessing-fork' in sys.argv:  # a worker uvicorn spawned\n"
        "    time.sleep(7)\n", encoding="utf-8")
    path = os.pathsep.join(p for p in (str(slow), os.environ.get("PYTHONPATH", "")) if p)
    server = servers(workers=2, env={"PYTHONPATH": path, "BANDIT_ROUTER_LOG_LEVEL": "info"})
    server.wait_ready(timeout=60)
    assert len(server.worker_pids(2, timeout=60)) == 2, server.log_tail()
    server.terminate()
    log = (tmp_path / f"server-{server.port}.log").read_text()
    assert "died" not in log, log


def test_docs_examples_work_as_written(servers: Callable[..., Server], tmp_path: Path) -> None:
    text = service_section(ROOT)
    blocks = dict(re.findall(r"<!-- tested: ([\w-]+).*?-->\s*```sh\n(.*?)```", text, re.S))
    assert set(blocks) == {"round-trip", "route-options", "models", "backup"}
    if shutil.which("sqlite3") is None:
        del blocks["backup"]  # the sqlite3 command-line shell is not installed here
    server = servers(default_db=True)  # `make run`: no --db, the database is ./bandit-router.db
    server.wait_ready()
    outputs = {}
    for name, block in blocks.items():
        script = "set -euo pipefail\n" + block.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, (name, done.stderr)
        assert '"error"' not in done.stdout, (name, done.stdout)
        outputs[name] = done.stdout
    assert '"status":"applied"' in outputs["round-trip"] and '"feedback_learned":1' in outputs["round-trip"]
    assert '"retired":"my-finetune"' in outputs["models"]
    assert (tmp_path / "bandit-router.db").exists()
    backups = list(tmp_path.glob("backup-*.db"))
    if "backup" in blocks:
        assert len(backups) == 2
        for backup in backups:
            with sqlite3.connect(backup) as conn:
                assert conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 2


def test_the_budgets_examples_work_as_written(servers: Callable[..., Server], tmp_path: Path) -> None:
    """docs/budgets.md's curl block against a live server with keys: read the targets with the client key, set
    them with the admin key, remove them again; every reply is JSON without an error."""
    client_key, admin_key = "client-key-0123456789", "admin-key-0123456789"
    block = re.search(r"<!-- tested: budgets.*?-->\s*```bash\n(.*?)```", page(ROOT, "budgets.md"), re.S)
    assert block is not None
    server = servers(env={"BANDIT_ROUTER_API_KEYS": client_key, "BANDIT_ROUTER_ADMIN_KEYS": admin_key})
    server.wait_ready()
    script = "set -euo pipefail\n" + block.group(1).replace("localhost:8000", f"127.0.0.1:{server.port}")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "CLIENT_KEY": client_key, "ADMIN_KEY": admin_key})
    assert done.returncode == 0, done.stderr
    replies, text, decoder = [], done.stdout.strip(), json.JSONDecoder()
    while text:  # the replies follow each other without newlines (curl -s)
        reply, end = decoder.raw_decode(text)
        replies.append(reply)
        text = text[end:].lstrip()
    assert [r.get("error") for r in replies] == [None, None, None], replies
    assert [r["targets"] for r in replies] == [
        [], ["avg_cost_usd=0.0005", "@acme:spend_usd=50/1d", "@acme:share:gpt-4o=0.3"], []]
    # what the comments show (the first read's showed the targets that only the PUT after it sets)
    first, put = replies[0], replies[1]
    assert first["budgets"]["cost_step"] == 0.05 and first["report"]["tenants"] == {}
    assert first["report"]["global"]["cost_weight"] is None and first["report"]["global"]["exhausted"] is False
    assert put["budgets"]["avg_cost_usd"] == 0.0005 and set(put["budgets"]["tenants"]) == {"acme"}
    assert done.stdout.count("\n") == 3  # one reply a line (they ran together on one line without -w '\n')


def test_serve_starts_on_a_catalog_file_whose_routable_models_the_log_holds(servers: Callable[..., Server],
                                                                            tmp_path: Path) -> None:
    """`serve` checks the live catalog (the file with the models added and retired at run time) before it starts:
    a catalog file left with only a `route = false` model, on a database where `POST /v1/models` added the
    routable model, serves, and so does a fixed policy on that model (both were refused at start when the file
    alone was checked)."""
    judge = "[[models]]\nname = 'judge'\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.6\nroute = false\n"
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(judge + "[[models]]\nname = 'first'\ninput_usd_per_mtok = 0.1\noutput_usd_per_mtok = 0.4\n")
    server = servers(env={"BANDIT_ROUTER_CATALOG": str(catalog)})
    server.wait_ready()
    added = loopback.post(server.url + "/v1/models", json={"name": "added", "input_usd_per_mtok": 0.2,
                                                           "output_usd_per_mtok": 0.8})
    assert added.status_code == 201, added.text
    server.terminate()
    catalog.write_text(judge)  # `first` left the file
    for policy in ("default", "fixed:added"):
        server = servers(env={"BANDIT_ROUTER_CATALOG": str(catalog), "BANDIT_ROUTER_POLICY": policy})
        server.wait_ready()
        reply = loopback.post(server.url + "/v1/route", json={"prompt": "hi"})
        assert reply.status_code == 200 and reply.json()["model"] == "added", reply.text
        server.terminate()


SLOW_RECOVERY_S = 4.0


def _slow_recoveries(tmp_path: Path, slow: set[int]) -> dict[str, str]:
    """The environment of a server whose workers number themselves in the order they start (0, 1, …; a worker
    uvicorn starts in place of a dead one takes the next number) and of which those in `slow` take
    `SLOW_RECOVERY_S` more to recover (a sitecustomize that delays `Engine._recover` in spawned processes only):
    what a long replay of the log does, at a time the test chooses."""
    site = tmp_path / "slow-recovery"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\nimport sys\nimport time\n\n"
        "if '--multiprocessing-fork' in sys.argv:  # a worker uvicorn spawned\n"
        "    from bandit_router.service import engine\n\n"
        "    number = 0\n"
        "    while True:  # this worker's number: the first free one\n"
        "        try:\n"
        f"            os.close(os.open({str(site)!r} + f'/worker-{{number}}', os.O_CREAT | os.O_EXCL))\n"
        "            break\n"
        "        except FileExistsError:\n"
        "            number += 1\n"
        "    recover = engine.Engine._recover\n\n"
        "    def slowly(self):\n"
        f"        if number in {sorted(slow)!r}:\n"
        f"            time.sleep({SLOW_RECOVERY_S})\n"
        "        recover(self)\n\n"
        "    engine.Engine._recover = slowly\n", encoding="utf-8")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "BANDIT_ROUTER_LOG_LEVEL": "info"}


def _route_status(url: str) -> int:
    return loopback.post(url + "/v1/route", json={"prompt": "is every worker ready?"},
                         headers={"connection": "close"}, timeout=10).status_code


def test_with_two_workers_ready_means_every_worker_routes(servers: Callable[..., Server], tmp_path: Path) -> None:
    """`serve --workers 2`, one worker recovering 4 s longer than the other (a long replay). uvicorn lets a worker
    take connections once its lifespan has started, before the engine has recovered: the fast worker said ready
    while the slow one took half the new connections and answered them 503 "recovering" (the race behind a04ba2b's
    workaround). Now no worker says ready while another one that takes connections has not recovered: `/readyz`
    answers 503 naming the other worker, and once it says 200 every route is answered, whichever worker gets it.
    (Fails without the fix: 20 of 20 routes 503 in one run.)"""
    server = servers(workers=2, env=_slow_recoveries(tmp_path, {1}))
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log_tail()
        try:
            reply = loopback.get(server.url + "/readyz", headers={"connection": "close"}, timeout=5)
        except httpx.ConnectError:  # not listening yet
            time.sleep(0.05)
            continue
        if reply.status_code == 200:
            break
        seen.add(reply.json()["message"])
        time.sleep(0.05)
    assert [_route_status(server.url) for _ in range(20)] == [200] * 20
    assert len(server.worker_pids(2, timeout=5)) == 2  # both answer: the slow one has recovered
    # the fast worker said ready only after the slow one had recovered; or, when the slow one started after the fast
    # one was ready (a slow import), the slow one took connections only once recovered
    log = server.logpath.read_text()
    assert f"not ready: {NOT_READY}" in seen or "recovers before it takes connections" in log, (seen, log)


def test_a_worker_started_in_place_of_a_dead_one_takes_connections_once_recovered(
    servers: Callable[..., Server], tmp_path: Path
) -> None:
    """A worker killed (SIGKILL: out of memory, a crash) is replaced by uvicorn; its replacement, recovering for 4 s,
    took connections as it started and answered them 503 while the other worker served and said ready (67 of 1357
    routes in a drill, /tmp/workers/kill_worker.py). Now a worker that starts while another one is ready recovers
    before it takes connections: every route and `/readyz` is answered 200 throughout, by the worker that lived
    until the replacement serves too."""
    server = servers(workers=2, env=_slow_recoveries(tmp_path, {2}))  # workers 0 and 1, then the replacement, 2
    server.wait_ready(60)
    pids = server.worker_pids(2, timeout=60)
    assert len(pids) == 2, server.log_tail()
    os.kill(min(pids), signal.SIGKILL)
    statuses: list[int] = []
    replacement: set[int] = set()
    deadline = time.monotonic() + 60
    while not replacement and time.monotonic() < deadline:
        statuses.append(_route_status(server.url))
        ready = loopback.get(server.url + "/readyz", headers={"connection": "close"}, timeout=5)
        statuses.append(ready.status_code)
        if ready.status_code == 200:
            replacement = {ready.json()["pid"]} - pids
    assert replacement, server.log_tail()
    assert set(statuses) == {200}, sorted(set(statuses))
    log = server.logpath.read_text()
    assert f"this one (pid {replacement.pop()}) recovers before it takes connections" in log, log
