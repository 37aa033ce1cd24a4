"""Drill 4: the catalog file changed between two starts on one database: a model retired (removed from the file), a
model repriced (×10), a model added; then run-time changes (`POST /v1/models`, `DELETE /v1/models/…`) meeting
later edits of the file. What is learned is kept, what is new is explored, what is gone is never routed to.

    .venv/bin/python experiments/ops-drills/d4_catalog.py       # ~1 min
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import httpx
from drills import Load, Serve, wait


def entry(name: str, price_in: float, price_out: float, family: str, prior: float) -> str:
    return (f'[[models]]\nname = "{name}"\ninput_usd_per_mtok = {price_in}\noutput_usd_per_mtok = {price_out}\n'
            f'tags = {{ family = "{family}", tier = "small" }}\nprior_quality = {prior}\n\n')


MINI = entry("gpt-4o-mini", 0.15, 0.60, "openai", 0.4)
HAIKU = entry("claude-haiku-4-5", 1.0, 5.0, "anthropic", 0.73)
HAIKU_X10 = entry("claude-haiku-4-5", 10.0, 50.0, "anthropic", 0.73)
LLAMA = entry("llama-3.1-8b-instruct", 0.18, 0.18, "meta", 0.3)
GEMINI = entry("gemini-2.5-flash", 0.30, 2.50, "google", 0.8)
GEMINI_X10 = entry("gemini-2.5-flash", 3.0, 25.0, "google", 0.8)


class Catalogs:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="drill4-"))
        self.db = self.folder / "router.db"

    def serve(self, name: str, text: str) -> Serve:
        (self.folder / f"{name}.toml").write_text(text)
        server = Serve(self.folder, {"BANDIT_ROUTER_DB": str(self.db), "BANDIT_ROUTER_SEED": "5",
                                     "BANDIT_ROUTER_CATALOG": str(self.folder / f"{name}.toml")}, name)
        server.wait_ready()
        return server


def shares(url: str, n: int = 300, cost_weight: float = 0.0) -> dict[str, int]:
    with httpx.Client(timeout=10) as client:
        return dict(Counter(client.post(url + "/v1/route", json={"prompt": f"Fix this SQL query #{i}",
                                                                 "cost_weight": cost_weight}).json()["model"]
                            for i in range(n)))


def models(url: str) -> tuple[list[tuple[str, float, int]], list[str]]:
    listed = httpx.get(url + "/v1/models").json()
    return [(m["name"], m["input_usd_per_mtok"], m["feedback"]) for m in listed["models"]], listed["retired"]


def file_edits() -> None:
    catalogs = Catalogs()
    server = catalogs.serve("first", MINI + HAIKU + LLAMA)
    load = Load([server.url], threads=3).start()
    wait(lambda: len(load.rated) >= 1500, 300, "traffic")
    load.finish()
    pair = {"prompt": "Fix this SQL query", "models": ["gpt-4o-mini", "claude-haiku-4-5"]}
    before = {lam: httpx.post(server.url + "/v1/route", json={**pair, "cost_weight": lam}).json()["probabilities"]
              for lam in (0.0, 200.0)}
    print("first catalog (mini, haiku, llama):", models(server.url)[0], "shares at λ = 0:", shares(server.url))
    server.terminate()
    server.stop()
    server = catalogs.serve("second", MINI + HAIKU_X10 + GEMINI)  # llama retired, haiku ×10, gemini new
    after = {lam: httpx.post(server.url + "/v1/route", json={**pair, "cost_weight": lam}).json()["probabilities"]
             for lam in (0.0, 200.0)}
    print("second catalog (llama removed, haiku ×10, gemini added):", models(server.url),
          "recovery:", httpx.get(server.url + "/readyz").json()["recovery"])
    print("  mini vs haiku, λ = 0 before/after:", before[0.0], after[0.0])
    print("  mini vs haiku, λ = 200 before/after:", before[200.0], after[200.0])
    print("  shares at λ = 0:", shares(server.url, 400))
    gone = httpx.post(server.url + "/v1/route", json={"prompt": "x", "models": ["llama-3.1-8b-instruct"]})
    print("  a route naming the removed model:", gone.status_code, gone.json()["message"])
    stats = httpx.get(server.url + "/v1/stats").json()
    print("  /v1/stats models:", [(m["model"], m["decisions"]) for m in stats["models"]])
    load = Load([server.url], threads=3, seed=3).start()
    wait(lambda: len(load.rated) >= 600, 300, "traffic")
    load.finish()
    print("  600 more rated requests:", dict(Counter(load.routed.values())))
    server.terminate()
    print("  warnings:", server.problems())
    server.stop()


def run_time_changes() -> None:
    catalogs = Catalogs()
    server = catalogs.serve("file-1", MINI + HAIKU + LLAMA)
    load = Load([server.url], threads=2).start()
    wait(lambda: len(load.rated) >= 300, 300, "traffic")
    load.finish()
    added = httpx.post(server.url + "/v1/models", json={"name": "gemini-2.5-flash", "input_usd_per_mtok": 0.3,
                                                        "output_usd_per_mtok": 2.5, "tags": {"family": "google"}})
    retired = httpx.delete(server.url + "/v1/models/llama-3.1-8b-instruct")
    print("run time: gemini added", added.status_code, "llama retired", retired.status_code, models(server.url))
    server.terminate()
    server.stop()
    for name, text, what in (("file-1-again", MINI + HAIKU + LLAMA, "the same file"),
                             ("file-2", MINI + HAIKU + LLAMA + GEMINI_X10, "gemini in the file at ×10"),
                             ("file-3", MINI + HAIKU, "llama and gemini out of the file")):
        server = catalogs.serve(name, text)
        print(f"restart with {what}:", models(server.url), shares(server.url, 200), server.problems())
        server.terminate()
        server.stop()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    file_edits()
    run_time_changes()
    print(json.dumps({"done": True}))
