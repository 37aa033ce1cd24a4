"""What starting costs, from two checkouts in alternating rounds: the CPU of `import bandit_router`, of `import
bandit_router.cli` (every command's imports), of building a `default` router (which loads the compiled
quadrature), and a real `bandit-router serve` (a fresh SQLite file) until its first `/healthz` answer: wall and
the server's CPU by then (from /proc).

    python -m benchmarks.startup_ab --base CHECKOUT --label NAME [--this CHECKOUT] [--rounds 6]
    # → benchmarks/results/profiles/startup-ab-NAME.md
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks import provenance

HERE = Path(__file__).resolve().parent
SNIPPETS = {
    "import bandit_router": "import bandit_router",
    "import bandit_router.cli": "import bandit_router.cli",
    "import + Router(default)": "from bandit_router import Router, default_catalog; "
                                "Router(list(default_catalog())[:5], 'default', seed=0)",
}


def _cpu(checkout: Path, code: str) -> float:
    """CPU seconds of a fresh `python -c code` with `checkout`'s package first on the path."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as folder:  # not the checkout: its folder would come first on sys.path
        subprocess.run([sys.executable, "-c", code], check=True, cwd=folder,
                       env={**os.environ, "PYTHONPATH": str(checkout)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _serve(checkout: Path) -> tuple[float, float]:
    """(wall seconds to the first /healthz 200, the server's CPU seconds by then)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-c", "from bandit_router.cli import main; main()", "serve", "--db",
                   f"{folder}/r.db", "--port", str(port), "--log-level", "warning"]
        start = time.perf_counter()
        server = subprocess.Popen(command, cwd=folder, env={**os.environ, "PYTHONPATH": str(checkout)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
                        reply.read()
                    break
                except OSError:
                    if server.poll() is not None:
                        raise RuntimeError("serve exited before answering") from None
                    time.sleep(0.01)
            wall = time.perf_counter() - start
            with open(f"/proc/{server.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return wall, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        finally:
            server.terminate()
            server.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    provenance.add_ab_arguments(parser, "startup-ab-LABEL.md",
                                base_help="a checkout whose bandit_router is the baseline")
    args = parser.parse_args(argv)
    sides = {"base": args.base.resolve(), "this": args.this.resolve()}
    load = os.getloadavg()[0]
    runs: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
    for r in range(args.rounds):
        for side in (("base", "this") if r % 2 == 0 else ("this", "base")):
            for name, code in SNIPPETS.items():
                runs[side].setdefault(name, []).append(_cpu(sides[side], code))
            wall, cpu = _serve(sides[side])
            runs[side].setdefault("serve: wall to the first /healthz", []).append(wall)
            runs[side].setdefault("serve: its CPU by then", []).append(cpu)
    lines = [
        f"# Start-up A/B: {args.label}",
        "",
        f"{provenance.sides_line(sides['base'], sides['this'])}; {provenance.machine()}; "
        f"{provenance.load_note(load, os.getloadavg()[0])}",
        f"command: python -m benchmarks.startup_ab --base <checkout> --label {args.label} --rounds {args.rounds}",
        "",
        "| seconds (CPU unless said), median of the rounds [all rounds] | base | this |",
        "|---|---|---|",
    ]
    for name in runs["base"]:
        b, t = runs["base"][name], runs["this"][name]
        lines.append(f"| {name} | {statistics.median(b):.3f} [{', '.join(f'{x:.2f}' for x in b)}] | "
                     f"{statistics.median(t):.3f} [{', '.join(f'{x:.2f}' for x in t)}] |")
    provenance.write_report(args.out, f"startup-ab-{args.label}.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
