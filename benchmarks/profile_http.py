"""Where the server's CPU goes per request: py-spy samples of a real `bandit-router serve` under `wrk`, as text.

    python -m benchmarks.profile_http --label after      # → benchmarks/results/profiles/http-after.txt

For each endpoint (`GET /healthz`, the trivial baseline; `POST /v1/route`; `POST /v1/feedback`) the server is
loaded with `wrk -t1 -c64` (the same scripts as `bench_http`) while `py-spy record --nonblocking` samples every
thread of the server process (idle threads, and a thread waiting for the GIL, are not sampled). The server's
CPU time from /proc over the same window gives CPU µs per request, and each frame's share of the samples turns
into µs per request: robust to a machine shared with other work, unlike requests/s. The report lists

- the CPU µs per request and the requests/s of each endpoint;
- a breakdown by component (first matching rule, innermost frame first; see `COMPONENTS`);
- the heaviest frames by inclusive and by self time.

py-spy (`pip install py-spy`) needs to attach to the server (root, or ptrace permission).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks import bench_http, provenance
from simulator.report import checkout_commit, git_commit

HERE = Path(__file__).resolve().parent
RATE_HZ = 400

COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("writer thread: SQLite statements", ("sqlite3", "store/sqlite.py")),
    ("writer thread: log, learning, other", ("service/writer.py", "bandit_router/log/")),
    ("Router.route: features", ("bandit_router/features.py",)),
    ("Router.route: policy (pmf)", ("bandit_router/policies/", "bandit_router/exploration.py")),
    ("Router.route: the rest", ("bandit_router/router.py",)),
    ("body decode + validation", ("pydantic", "msgspec", "service/schemas.py", "service/fastpath.py:decode")),
    ("reply encode", ("json/encoder.py", "orjson", "service/errors.py")),
    ("service code (routes, engine, middleware)", ("bandit_router/",)),
    ("FastAPI / Starlette", ("fastapi/", "starlette/", "anyio/")),
    ("uvicorn / httptools / event loop", ("uvicorn/", "httptools", "asyncio/", "uvloop", "<frozen runpy>")),
)
"""Rules that name the component a sample belongs to: the innermost frame whose file matches one of a rule's
markers decides (rules are tried in order for each frame, innermost first)."""


_ROOTS = ("<frozen runpy>", "typer/", "bandit_router/cli.py", "service/cli.py", "uvicorn/main.py",
          "uvicorn/server.py", "uvicorn/_compat.py", "asyncio/runners.py", "threading.py")
"""Frames every sample of a thread passes through: left out of the inclusive table."""


def _frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f]


def _component(frames: list[str], writer: bool) -> str:
    for frame in reversed(frames):
        for name, markers in COMPONENTS:
            if name.startswith("writer thread") and not writer:
                continue
            if any(m in frame for m in markers):
                if writer and not name.startswith("writer thread"):
                    return "writer thread: log, learning, other"
                return name
    return "writer thread: log, learning, other" if writer else "other"


def summarize(raw: str, cpu_us_per_request: float, top: int = 25) -> list[str]:
    """Text tables from py-spy's raw (collapsed-stack) output: `frame;frame;… count` per line."""
    samples: list[tuple[list[str], int]] = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples.append((_frames(stack), int(count)))
    total = sum(n for _, n in samples) or 1
    components: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    by_component: dict[str, Counter[str]] = {}
    for frames, n in samples:
        writer = any("Writer._run" in f for f in frames)
        component = _component(frames, writer)
        components[component] += n
        for frame in set(frames):
            if not any(root in frame for root in _ROOTS):
                inclusive[frame] += n
        if frames:
            own[frames[-1]] += n
            ours = [f for f in frames if "bandit_router/" in f and not any(root in f for root in _ROOTS)]
            by_component.setdefault(component, Counter())[ours[-1] if ours else frames[-1]] += n

    def us(n: int) -> str:
        return f"{n / total * cpu_us_per_request:8.1f} µs {100 * n / total:5.1f}%"

    lines = [f"samples: {total}", "", "by component (CPU per request, share of samples), each with its heaviest "
             "frames (the innermost bandit_router frame of the sample, else the innermost frame):"]
    for name, n in components.most_common():
        lines.append(f"  {us(n)}  {name}")
        lines += [f"      {us(k)}    {frame}" for frame, k in by_component[name].most_common(4)]
    lines += ["", f"top {top} frames, inclusive:"]
    lines += [f"  {us(n)}  {frame}" for frame, n in inclusive.most_common(top) if n < total]
    lines += ["", f"top {top} frames, self:"]
    lines += [f"  {us(n)}  {frame}" for frame, n in own.most_common(top)]
    return lines


def _thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` (Linux /proc)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def profile(label: str, out: Path, duration: int, connections: int, code: Path | None = None) -> Path:
    wrk = bench_http.wrk_path()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if wrk is None or not Path(py_spy).exists():
        raise SystemExit("needs wrk and py-spy (pip install py-spy)")
    served = checkout_commit(code) if code is not None else git_commit()
    report = [
        f"# Server CPU profile: {label}",
        "",
        f"server code at commit {served} (profiler at {git_commit()}), {provenance.machine()}",
        f"command: python -m benchmarks.profile_http --label {label} --duration {duration} "
        f"--connections {connections}" + (f" --code <checkout of {served}>" if code is not None else ""),
        f"server: bandit-router serve, 1 worker, default policy, shipped catalog; load: wrk -t1 -c{connections} "
        f"-d{duration}s; py-spy record --nonblocking --rate {RATE_HZ}",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="profile-http-") as tmp, bench_http.serving(Path(tmp), code=code) as server:
        folder = Path(tmp)
        bench_http.warm_up(server)
        route_rps = 0.0
        for name, path in (("healthz", "/healthz"), ("route", "/v1/route"), ("feedback", "/v1/feedback")):
            args = [str(server.fresh_ids(int(3 * route_rps * duration) + 1000, name))] if name == "feedback" else []
            raw_path = folder / f"{name}.raw"
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(server.pid), "--rate", str(RATE_HZ), "--nonblocking",
                 "--format", "raw", "--duration", str(duration + 1), "-o", str(raw_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            threads = _thread_cpu(server.pid)
            m = bench_http.load(wrk, server, name, connections, duration, *args)
            after = _thread_cpu(server.pid)
            main_us = (after.get(server.pid, 0.0) - threads.get(server.pid, 0.0)) / max(m["requests"], 1) * 1e6
            others_us = sum(v - threads.get(t, 0.0) for t, v in after.items() if t != server.pid)
            others_us = others_us / max(m["requests"], 1) * 1e6
            route_rps = m["rps"] if name == "route" else route_rps
            spy.wait(60)
            raw = raw_path.read_text() if raw_path.exists() else ""
            report += [
                f"## {name.upper() if name == 'healthz' else name}: {'GET' if name == 'healthz' else 'POST'} {path}",
                "",
                f"requests/s {m['rps']:,.0f}, p50 {m['p50_us'] / 1000:.1f} ms, p99 {m['p99_us'] / 1000:.1f} ms, "
                f"server CPU {m['cpu_us']:.1f} µs per request (wrk {m['load_cpu_us']:.1f} µs), errors {m['errors']}",
                f"by thread (/proc): event loop {main_us:.1f} µs, other threads (writer, …) {others_us:.1f} µs",
                "",
                "```",
                *summarize(raw, m["cpu_us"]),
                "```",
                "",
            ]
    return provenance.write_report(out, f"http-{label}.txt", report, echo=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    provenance.add_output_arguments(parser, "http-LABEL.txt", duration=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--code", type=Path, default=None,
                        help="serve bandit_router from this checkout of another commit (for a before profile)")
    args = parser.parse_args(argv)
    print(profile(args.label, Path(args.out), args.duration, args.connections, args.code))
    return 0


if __name__ == "__main__":
    sys.exit(main())
