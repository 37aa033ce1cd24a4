"""The documentation: the site builds strictly, every page is reachable, every Python snippet runs as written,
and the README stays a short front page that links into the site."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs_pages import page

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _snippets() -> list[tuple[str, int, str]]:
    out = []
    for name in ["README.md", *(f"docs/{p}" for p in PAGES)]:
        for i, block in enumerate(FENCE.findall((ROOT / name).read_text(encoding="utf-8"))):
            out.append((name, i, block))
    return out


SNIPPETS = _snippets()


def test_there_are_snippets_to_run() -> None:
    assert len(SNIPPETS) >= 5


@pytest.mark.parametrize(("page", "index", "code"), SNIPPETS, ids=[f"{p}#{i}" for p, i, _ in SNIPPETS])
def test_every_python_snippet_runs_as_written(page: str, index: int, code: str, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{page}, snippet {index}:\n{done.stderr[-3000:]}"


SHORT_FENCE = re.compile(r"^```py\n(.*?)^```", re.S | re.M)
SHORT_SNIPPETS = [
    (name, i, block)
    for name in ["README.md", *(f"docs/{p}" for p in PAGES)]
    for i, block in enumerate(SHORT_FENCE.findall((ROOT / name).read_text(encoding="utf-8")))
]


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway (the service in a thread, on a free loopback port) in front of the fake upstream, which answers
    for two catalog models: its URL."""
    from bandit_router.catalog import ModelSpec
    from bandit_router.config import Settings
    from bandit_router.service import create_app
    from benchmarks.fake_upstream import FakeUpstream, ServerThread

    upstream = ServerThread(FakeUpstream())
    models = tuple(ModelSpec(n, 1.0, 2.0, base_url=upstream.url + "/v1") for n in ("fake-coder", "fake-writer"))
    gateway = ServerThread(create_app(Settings(db=tmp_path_factory.mktemp("gateway") / "gw.db", models=models,
                                               seed=1)))
    try:
        yield gateway.wait_ready()
    finally:
        gateway.stop()
        upstream.stop()


@pytest.mark.parametrize(("page", "index", "code"), SHORT_SNIPPETS, ids=[f"{p}#{i}" for p, i, _ in SHORT_SNIPPETS])
def test_every_short_gateway_snippet_runs_against_a_live_gateway(
    page: str, index: int, code: str, live_gateway: str
) -> None:
    """The ```py blocks (the gateway's round trip in three lines, shown without its imports) run as written against
    a live gateway, given `openai` and `httpx` and with the service's address (http://127.0.0.1:8000) the live
    one's: the completion comes back and the feedback each posts is applied. The ```python blocks run alone
    (above); these ran nowhere."""
    import types
    from typing import Any

    import httpx
    import openai

    assert "http://127.0.0.1:8000/v1" in code
    replies: list[httpx.Response] = []

    def post(*args: Any, **kwargs: Any) -> httpx.Response:
        replies.append(reply := httpx.post(*args, **kwargs))
        return reply

    namespace = {"openai": openai, "httpx": types.SimpleNamespace(**{**vars(httpx), "post": post})}
    exec(compile(code.replace("http://127.0.0.1:8000", live_gateway), f"{page}#{index}", "exec"), namespace)
    assert replies and all(r.status_code == 200 and r.json()["status"] == "applied" for r in replies), \
        [r.text for r in replies]


TOML_FENCE = re.compile(r"^```toml\n(.*?)^```", re.S | re.M)
TOML_BLOCKS = [
    (name, i, block)
    for name in ["README.md", *(f"docs/{p}" for p in PAGES)]
    for i, block in enumerate(TOML_FENCE.findall((ROOT / name).read_text(encoding="utf-8")))
]


@pytest.mark.parametrize(("page", "index", "text"), TOML_BLOCKS, ids=[f"{p}#{i}" for p, i, _ in TOML_BLOCKS])
def test_every_toml_example_is_a_settings_file_serve_accepts(
    page: str, index: int, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each TOML block of the docs, saved as bandit-router.toml, loads and passes every check `serve` makes before
    it starts: its keys and tables, and what refers to what (a router's models in the catalog with an upstream,
    no `route = false` model routed to, a judge that can be called). The files an example names beside it are
    there: `catalog.toml` (the shipped catalog), the key files; the providers' key variables are set."""
    from bandit_router.config import load_settings
    from bandit_router.service.app import check_upstreams

    (tmp_path / "catalog.toml").write_bytes((ROOT / "bandit_router" / "default_catalog.toml").read_bytes())
    for name in ("client-keys", "admin-keys"):
        (tmp_path / name).write_text(f"{name}-0123456789abcdef\n", encoding="utf-8")
        (tmp_path / name).chmod(0o600)
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "TOGETHER_API_KEY"):
        monkeypatch.setenv(variable, "sk-test")
    config = tmp_path / "bandit-router.toml"
    if text.startswith(f"# {RULES_FILE}\n"):  # a rules file's example: read as `rules:file=` reads it
        (tmp_path / RULES_FILE).write_text(text, encoding="utf-8")
        text = f'policy = "rules:file={RULES_FILE}"\n'
    config.write_text(text, encoding="utf-8")
    check_upstreams(load_settings(config, env={}))


RULES_FILE = "rules.toml"


def test_the_gateway_pages_keyless_try_out_serves_the_fake_upstreams_models(tmp_path: Path) -> None:
    """The gateway page's "Try it without provider keys" writes a settings file with a shell here-document (a ```sh
    block, which the TOML check above does not see): it loads, every model it names is one the fake upstream
    serves, and each is called at the port the page starts the fake upstream on. Before it the docs never said how
    to try the gateway under `make run` without the providers' keys (the README's round trip answered 503)."""
    from bandit_router.config import load_settings
    from bandit_router.service.app import check_upstreams
    from benchmarks.fake_upstream import QUALITY

    text = (DOCS / "service" / "gateway.md").read_text(encoding="utf-8")
    heredoc = re.search(r"^cat > fake-gateway\.toml <<'EOF'\n(.*?)^EOF$", text, re.S | re.M)
    port = re.search(r"^\.venv/bin/python -m benchmarks\.fake_upstream --port (\d+) &", text, re.M)
    assert heredoc and port and "BANDIT_ROUTER_CONFIG=fake-gateway.toml make run" in text
    config = tmp_path / "fake-gateway.toml"
    config.write_text(heredoc.group(1), encoding="utf-8")
    settings = load_settings(config, env={})
    check_upstreams(settings)
    assert settings.models and {m.name for m in settings.models} <= set(QUALITY)
    assert settings.default_base_url == f"http://127.0.0.1:{port.group(1)}/v1"


def test_the_learning_pages_rules_route_as_their_comments_say(tmp_path: Path) -> None:
    """The `rules` examples of docs/learning.md, the settings' form and the file's, route as written: the regex
    example was `(?i)^translate`, said to be "searched in the prompt's text", and a gateway request (a system
    message first) never matched it, since the rules read every message's content joined by newlines."""
    from bandit_router.config import load_settings
    from bandit_router.log.policies import build_router
    from bandit_router.types import Message, Request

    blocks = [text for page, _, text in TOML_BLOCKS if page == "docs/learning.md" and "rules" in text]
    assert len(blocks) == 2 and blocks[1].startswith(f"# {RULES_FILE}\n"), blocks
    (tmp_path / RULES_FILE).write_text(blocks[1], encoding="utf-8")
    translate = Request(messages=[Message(role="system", content="You are a helpful assistant."),
                                  Message(role="user", content="Translate 'good morning' into French.")],
                        context={"task": "support"})
    for text in (blocks[0], f'policy = "rules:file={RULES_FILE}"\n'):
        config = tmp_path / "bandit-router.toml"
        config.write_text(text, encoding="utf-8")
        router = build_router(load_settings(config, env={}))
        assert router.route(translate).model == "gpt-4.1-nano", text
        assert router.route(Request(prompt="def f(x): return x")).model == "claude-sonnet-4-5"
        assert router.route(Request(prompt="Hello there.")).model == "gpt-4o-mini"
        other_task = router.route(Request(prompt="Translate this.", context={"task": "sales"})).model
        assert other_task == ("gpt-4o-mini" if text == blocks[0] else "gpt-4.1-nano")  # the file's has no context
        long = router.route(Request(prompt="Hello there. " * 700)).model  # 2,100 estimated tokens
        assert long == ("gpt-4o" if text == blocks[0] else "gpt-4o-mini")  # the file's has no length rule


SH_FENCE = re.compile(r"^```(?:sh|bash)\n(.*?)^```", re.S | re.M)


def _rendered(name: str) -> str:
    """A page as the site shows it: docs/cli.md with the commands' own help and examples filled in."""
    return page(ROOT, name.removeprefix("docs/")) if name.startswith("docs/") else (ROOT / name).read_text("utf-8")


SIMULATE_COMMANDS = [
    (name, line.strip())
    for name in ["README.md", *(f"docs/{p}" for p in PAGES)]
    for block in SH_FENCE.findall(_rendered(name))
    for line in block.replace("\\\n", " ").splitlines()
    if line.strip().startswith("bandit-router simulate ")
]


@pytest.mark.parametrize(("page", "command"), SIMULATE_COMMANDS,
                         ids=[f"{p}#{i}" for i, (p, _) in enumerate(SIMULATE_COMMANDS)])
def test_every_documented_simulate_command_runs_as_written(
    page: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `bandit-router simulate` command of the docs runs from the repository root as written, shortened
    (one seed, 40 steps, one worker, no plots) and writing into a temporary folder instead of its `--out`. The
    research datasets it names are read from ../shared/data; a command whose dataset is not there is skipped."""
    from typer.testing import CliRunner

    from bandit_router.cli import app

    args = shlex.split(command, comments=True)[1:]
    for arg in args:
        if arg.startswith("dataset:") and not (ROOT / arg.removeprefix("dataset:")).is_file():
            pytest.skip(f"{arg.removeprefix('dataset:')} is not here (../shared/data beside the repository)")
    assert "--out" in args or "--config" in args, f"{page}: `{command}` has no --out (simulate requires one)"
    if "--out" in args:
        args[args.index("--out") + 1] = str(tmp_path / "out")
    monkeypatch.chdir(ROOT)
    shortened = ["--seeds", "1", "--steps", "40", "--workers", "1", "--quiet", "--no-plots",
                 "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, *shortened])
    assert result.exit_code == 0, f"{page}: `{command}`\n{result.output}"
    assert (tmp_path / "out" / "summary.json").is_file()


def _help_examples() -> list[tuple[str, str]]:
    """The values `simulate --help` (and so docs/cli.md) gives as examples of `--target`, `--scenario` and
    `--policies`: each `(option, value)`, placeholders (`<model>`, `@tenant:…`) left out."""
    import typer

    from bandit_router.cli import app

    command = typer.main.get_command(app).commands["simulate"]  # type: ignore[attr-defined]
    helps = {p.opts[0]: " ".join((getattr(p, "help", None) or "").split()) for p in command.params
             if p.param_type_name == "option"}
    targets = re.findall(r"(?<![\w@:])((?:avg_cost_usd|spend_usd|latency_p[\d.]+_s|share:[^\s,=]+(?:=[^\s,=]+)?)"
                         r"=[\d.]+(?:/\w+)?)", helps["--target"])
    scenarios = re.findall(r"\b((?:drift|new-model|outage|price-change|traffic-shift|delayed-feedback|"
                           r"noisy-feedback):[\w=.,-]*[\w])", helps["--scenario"])
    policies = helps["--policies"].split("e.g. ", 1)[1].split(". ", 1)[0]
    return ([("--target", t) for t in targets] + [("--scenario", s) for s in scenarios]
            + [("--policies", p.strip()) for p in policies.split(",") if p.strip() and "<" not in p])


def test_the_examples_the_simulate_options_give_run_on_the_packaged_world(tmp_path: Path) -> None:
    """The values `simulate --help` (which docs/cli.md shows) gives as examples of `--target`, `--scenario` and
    `--policies` are accepted, all in one run, by the packaged world, `synthetic:default`, as a newcomer copies
    them: `share:tier=premium=0.2` picked no model of it (nor of the shipped catalog, whose tiers are small,
    medium and large) and was refused."""
    from typer.testing import CliRunner

    from bandit_router.cli import app

    examples = _help_examples()
    assert {o for o, _ in examples} == {"--target", "--scenario", "--policies"} and len(examples) >= 12, examples
    policies = ",".join(v for o, v in examples if o == "--policies")
    options = [a for o, v in examples if o != "--policies" for a in (o, v)]
    result = CliRunner().invoke(app, ["simulate", "--env", "synthetic:default", "--policies", policies, *options,
                                      "--steps", "40", "--seeds", "1", "--workers", "1", "--quiet", "--no-plots",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, f"{examples}:\n{result.output}"


ANY_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)  # every block, so that a closing fence opens none
DATABASE_COMMANDS = [
    (name, line.strip())
    for name in ["README.md", *(f"docs/{p}" for p in PAGES)]
    for language, block in ANY_FENCE.findall(_rendered(name)) if language in ("", "sh", "bash", "text")
    for line in block.replace("\\\n", " ").splitlines()
    if line.strip().startswith(("bandit-router evaluate ", "bandit-router export ")) and "…" not in line
]


@pytest.fixture(scope="module")
def served_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database the service wrote: 40 route → feedback rounds under the shipped catalog and the `default` policy,
    with a `linucb` shadow."""
    import warnings

    from bandit_router.config import Settings
    from bandit_router.service import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
        from fastapi.testclient import TestClient

    db = tmp_path_factory.mktemp("served") / "bandit-router.db"
    with TestClient(create_app(Settings(db=db, seed=0, shadow_policies=("linucb",)))) as client:
        while client.get("/readyz").status_code != 200:
            pass
        for i in range(40):
            decision = client.post("/v1/route", json={"prompt": f"Fix this SQL query #{i}"}).json()
            sent = client.post("/v1/feedback", json={"decision_id": decision["decision_id"],
                                                     "quality": 0.5 + i % 5 / 10, "output_tokens": 100})
            assert sent.status_code == 200, sent.text
    return db


@pytest.mark.parametrize(("page_name", "command"), DATABASE_COMMANDS,
                         ids=[f"{p}#{i}" for i, (p, _) in enumerate(DATABASE_COMMANDS)])
def test_every_documented_evaluate_and_export_command_runs_as_written(
    page_name: str, command: str, served_database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `bandit-router evaluate` and `export` command of the docs (docs/evaluation.md, the commands' own examples
    on docs/cli.md) runs as written on a database the service wrote, its `--db` pointing there and its outputs
    written into a temporary folder."""
    from typer.testing import CliRunner

    from bandit_router.cli import app

    args = shlex.split(command, comments=True)[1:]
    args[args.index("--db") + 1] = str(served_database)
    monkeypatch.chdir(tmp_path)  # eval/, log.dsjson
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{page_name}: `{command}`\n{result.output}"
    for option in ("--out", "-o"):
        if option in args:
            written = tmp_path / args[args.index(option) + 1]
            assert written.is_file() or any(written.iterdir()), command


COMMAND_PAGES = ["README.md", *(f"docs/{p}" for p in PAGES),
                 *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("experiments/*/README.md")),
                 *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("benchmarks/results/**/README.md"))]
PLACEHOLDER = re.compile(r"<[^\s<>](?:[^<>]*[^\s<>])?>")  # `<name>`, `<your bandit-router key>`; not `< in >`
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
SHELL_BREAK = re.compile(r"\s(?:#|\||;|&&|>|<)")  # a comment, pipe, list or redirection ends a command's options
FLAG = re.compile(r"(?<![\w=:.-])(--?[A-Za-z][\w-]*)")


def _command_start(cli_commands: list[str]) -> re.Pattern[str]:
    """Where a command starts: `bandit-router CMD`, one of the CLI's commands written bare with an option after it
    (`serve --workers N`), `python -m benchmarks.NAME`, `experiments/…/NAME.py` (or `benchmarks/…`), or a script
    named without its folder (`tune.py --envs …`)."""
    bare = "|".join(cli_commands)
    return re.compile(rf"bandit-router (?P<cli>[a-z]+)\b|(?<![\w./ -])(?P<bare>{bare})(?=\s+-)"
                      r"|python3? -m (?P<module>benchmarks\.\w+)|(?P<script>(?:experiments|benchmarks)/[\w./-]+\.py)"
                      r"|(?<![\w./-])(?P<name>\w[\w-]*\.py)\b")


def _code_spans(text: str) -> list[str]:
    """The lines of every fenced block (a line continued with a backslash joined to the next) and every inline code
    span (one wrapped over lines joined again): where the pages write commands."""
    spans: list[str] = []

    def block(match: re.Match[str]) -> str:
        spans.extend(match.group(1).replace("\\\n", " ").splitlines())
        return "\n"

    prose = re.sub(r"^```\w*\n(.*?)^```", block, text, flags=re.S | re.M)
    return spans + [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def _commands(span: str, start: re.Pattern[str]) -> list[tuple[re.Match[str], list[str]]]:
    """Each command a span writes, with the options it names. A `<placeholder>` stands for one value; quoted values
    are not options; a comment, pipe, list (`;`, `&&`) or redirection ends a command, and the text after it may
    start another."""
    span = PLACEHOLDER.sub("VALUE", span)
    found, position = [], 0
    while match := start.search(span, position):
        rest = QUOTED.sub(lambda quoted: " " * len(quoted.group()), span[match.end():])
        end = SHELL_BREAK.search(rest)
        found.append((match, FLAG.findall(rest[:end.start()] if end else rest)))
        position = match.end() + (end.end() if end else len(rest))
    return found


def _script_path(match: re.Match[str], page_name: str) -> Path | None:
    """The file a command runs. A script named without its folder is the one beside an experiment's README that
    names it, else the one `experiments/*/` or `benchmarks/` has by that name; None when several have it (or none,
    outside an experiment's folder: not one of ours)."""
    if match.group("module"):
        return ROOT / (match.group("module").replace(".", "/") + ".py")
    if match.group("script"):
        return ROOT / match.group("script")
    folder, name = (ROOT / page_name).parent, match.group("name")
    if folder.parent == ROOT / "experiments":
        return folder / name
    candidates = [*ROOT.glob(f"experiments/*/{name}"), *ROOT.glob(f"benchmarks/{name}")]
    return candidates[0] if len(candidates) == 1 else None


def _script_options(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The option strings of the argparse parser that answers the script's `--help` (its description may name
    other commands' options, which are not its own)."""
    import argparse
    import contextlib
    import io
    import runpy
    from typing import IO

    answered: list[argparse.ArgumentParser] = []
    print_help = argparse.ArgumentParser.print_help

    def recording(parser: argparse.ArgumentParser, file: IO[str] | None = None) -> None:
        answered.append(parser)
        print_help(parser, file)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "print_help", recording)
        patch.setattr(sys, "argv", [str(path), "--help"])
        patch.syspath_prepend(str(path.parent))
        patch.chdir(tmp_path)
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
            runpy.run_path(str(path), run_name="__main__")
    assert len(answered) == 1, f"{path}: --help was not answered by one argparse parser"
    return {option for action in answered[0]._actions for option in action.option_strings}


def test_every_documented_command_names_options_its_command_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `bandit-router CMD --option` (or a bare `CMD --option` of the CLI), `python -m benchmarks.NAME --option`
    and `experiments/…/NAME.py --option` (or `NAME.py --option` in its folder's README) the README, the docs, the
    experiments' and the benchmark results' READMEs write (in a code block or inline) names a command that exists
    and options that command has, as its parser defines them: a renamed or mistyped flag, sub-command or script
    in a command a reader copies is an error before anything runs."""
    import typer

    from bandit_router.cli import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    cli = {name: {o for p in c.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
           for name, c in commands.items()}
    start = _command_start(list(cli))
    scripts: dict[Path, set[str]] = {}
    checked, wrong = {"cli": 0, "script": 0}, []
    for page_name in COMMAND_PAGES:
        for span in _code_spans(_rendered(page_name)):
            for match, flags in _commands(span, start):
                where = f"{page_name}: `{span}`"
                if match.group("cli") or match.group("bare"):
                    known = cli.get(match.group("cli") or match.group("bare"))
                    if known is None:
                        wrong.append(f"{where}: no command {match.group('cli')!r}")
                        continue
                    kind = "cli"
                else:
                    path = _script_path(match, page_name)
                    if not flags or path is None:
                        continue
                    if not path.is_file() or "__main__" not in path.read_text(encoding="utf-8"):
                        wrong.append(f"{where}: no script {path.relative_to(ROOT)} to run")
                        continue
                    if path not in scripts:
                        scripts[path] = _script_options(path, tmp_path, monkeypatch) | {"--help"}
                    known, kind = scripts[path], "script"
                checked[kind] += bool(flags)
                wrong += [f"{where}: {flag}" for flag in flags if flag not in known]
    assert wrong == []
    assert checked["cli"] >= 40 and checked["script"] >= 40, checked  # commands with options (51 and 53 today)


def test_the_docs_build_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "service" / "configuration" / "index.html").is_file()


def test_the_command_line_page_documents_every_command_and_option() -> None:
    """docs/cli.md is generated from the commands: each has its section, each option (both spellings of a flag)
    and each argument its row, so a newcomer finds `--no-plots` or `-C` without reading the code."""
    import typer

    from bandit_router.cli import app
    from tools.mkdocs_hooks import render

    page = render((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"))
    assert "{{" not in page
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert {"serve", "simulate", "evaluate", "export", "check", "migrate", "policies"} <= set(commands)
    for name, command in commands.items():
        section = page.split(f"## `bandit-router {name}`\n", 1)[1].split("\n## ", 1)[0]
        assert (command.help or "").split("\n")[0] in section
        for param in command.params:
            spellings = [*param.opts, *param.secondary_opts] if param.param_type_name == "option" else []
            for spelling in spellings:
                assert f"`{spelling}`" in section, (name, spelling)
            if param.param_type_name == "argument":
                assert f"`{param.name.upper()}…` (arguments)" in section, (name, param.name)
    assert "| `--db` | required |" in page.split("## `bandit-router evaluate`", 1)[1]
    simulate = page.split("## `bandit-router simulate`\n", 1)[1].split("\n## ", 1)[0]
    for row in ("| `--seeds` | `1` | Number of seeds (runs per policy and λ). |",  # `simulate`'s defaults are
                "| `--env` | required (here or in --config) |",                  # None (for --config's layers):
                "| `--workers` | one per core | Worker processes. |",             # the column shows those its
                "| `--prices` | `fit` |"):                                        # help states (it was empty)
        assert row in simulate, row


DOCTEST_MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for path in (ROOT / "bandit_router").rglob("*.py") if ">>> " in path.read_text(encoding="utf-8")
)


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_every_docstring_example_of_the_library_gives_what_it_shows(name: str) -> None:
    """The `>>>` examples in the library's docstrings (the API reference renders the public ones:
    `BudgetPacer`'s, `IPS.estimate`'s) give the output they show: `names.py`, `redact.py`, `store/location.py`,
    `hints.py` and the cascade's parsers had examples no test ran."""
    import doctest
    import importlib

    module = importlib.import_module(name.removesuffix(".__init__"))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


def test_every_page_is_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for name in PAGES:
        assert f" {name}" in nav, f"docs/{name} is not in mkdocs.yml's nav"


def test_the_readme_is_a_short_front_page_that_links_into_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 170
    for command in ("make run", "make test"):
        assert command in readme
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(links) >= 8
    for link in links:
        assert (ROOT / link).is_file(), link
    for link, anchor in re.findall(r"\]\((docs/[^)#]+)#([^)]+)\)", readme):  # the site's anchors: its headings' slugs
        headings = re.findall(r"^#+ (.+)$", (ROOT / link).read_text(encoding="utf-8"), re.M)
        slugs = {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", h.strip().lower())) for h in headings}
        assert anchor in slugs, (link, anchor)


def test_no_table_row_is_broken_across_lines() -> None:
    """A Markdown table takes each source line as a row: a row wrapped over several lines shows its first line cut
    short and the rest as rows of fragments. In the README and every page, outside code blocks, a line that starts
    with `|` ends with `|`, and the line after a table row is another row or blank."""
    broken = []
    for name in ["README.md", *(f"docs/{p}" for p in PAGES)]:
        fenced, previous_row = False, False
        for number, line in enumerate((ROOT / name).read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced, previous_row = not fenced, False
                continue
            row = not fenced and line.startswith("|")
            if (row and not line.rstrip().endswith("|")) or (previous_row and not row and line.strip()):
                broken.append(f"{name}:{number}: {line[:60]}")
            previous_row = row
    assert broken == []


def test_every_repository_path_the_docs_name_exists() -> None:
    """A path into the repository written in the README or the docs (`experiments/scenarios/run.sh`,
    `benchmarks/results/…`) names a file or folder that is there; globs and placeholders are left alone."""
    token = re.compile(r"(?<![\w./-])(?:experiments|benchmarks|bandit_router|simulator|tools|tests|docs)/[\w./*<>…-]*")
    missing = [
        (name, path)
        for name in ["README.md", *(f"docs/{p}" for p in PAGES)]
        for found in token.findall((ROOT / name).read_text(encoding="utf-8"))
        if not any(c in found for c in "*<>…") and not (ROOT / (path := found.rstrip(".-"))).exists()
    ]
    assert missing == []


def test_the_api_page_names_every_field_the_api_accepts() -> None:
    """docs/service/api.md names each field of each request body (`POST /v1/route`, `/v1/feedback`, `/v1/models`,
    `/v1/policies/promote`): a field the service accepts is documented where a user looks for it."""
    from bandit_router.service.schemas import FeedbackIn, ModelIn, PromoteIn, RouteIn

    text = (DOCS / "service" / "api.md").read_text(encoding="utf-8")
    for schema in (RouteIn, FeedbackIn, ModelIn, PromoteIn):
        missing = [f for f in schema.model_fields if f"`{f}`" not in text and f'"{f}"' not in text]
        assert missing == [], (schema.__name__, missing)


def test_the_simulator_page_names_every_policy_and_strategy() -> None:
    """docs/simulator.md names every registered policy and every simulator strategy `--policies` takes."""
    from bandit_router.policies import REGISTRY
    from simulator.agents.registry import AGENTS

    text = (DOCS / "simulator.md").read_text(encoding="utf-8")
    assert [name for name in [*REGISTRY, *AGENTS] if not re.search(rf"`{re.escape(name)}[`:\[]", text)] == []


ENV_EXAMPLE = re.compile(r"\b(BANDIT_ROUTER_[A-Z_]+)=(?:([^\s`'\"]+)|'([^']*)')")
ENV_EXAMPLES = sorted({
    (name, m.group(1), m.group(3) if m.group(3) is not None else m.group(2))
    for name in ["README.md", *(f"docs/{p}" for p in PAGES)]
    for m in ENV_EXAMPLE.finditer((ROOT / name).read_text(encoding="utf-8"))
})


@pytest.mark.parametrize(("page", "variable", "value"), ENV_EXAMPLES, ids=[f"{p}:{v}" for p, v, _ in ENV_EXAMPLES])
def test_every_environment_example_is_a_setting_serve_accepts(
    page: str, variable: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`BANDIT_ROUTER_X=value` as the docs write it, alone in the environment, loads and passes `serve`'s checks
    (with the default policy and catalog). `BANDIT_ROUTER_CONFIG=FILE` names a file the page writes with a shell
    here-document (`cat > FILE <<'EOF'`): it is written first, as the page has it."""
    from bandit_router.config import load_settings

    monkeypatch.chdir(tmp_path)  # no ./bandit-router.toml
    if variable == "BANDIT_ROUTER_CONFIG":
        text = (ROOT / page).read_text(encoding="utf-8")
        written = re.search(rf"^cat > {re.escape(value)} <<'EOF'\n(.*?)^EOF$", text, re.S | re.M)
        assert written, f"{page} names {value} without writing it"
        (tmp_path / value).write_text(written.group(1), encoding="utf-8")
    load_settings(env={variable: value})


def test_the_learning_page_keeps_its_name() -> None:
    """Other work links to docs/learning.md (the policies and their results)."""
    text = (DOCS / "learning.md").read_text(encoding="utf-8")
    assert "## Policies" in text and "## How a decision is made" in text


REPLY_PAGES = ["README.md", "docs/service/index.md"]


@pytest.mark.parametrize("name", REPLY_PAGES)
def test_the_replies_the_first_round_trip_shows_are_what_a_new_service_answers(name: str) -> None:
    """The first round trip's replies as a page shows them (`"model": …, "probability": …`, then `"reward": …`)
    are what a service on a new database answers to the request the page sends: the shown model's probability
    for that prompt and context under the shipped catalog's priors, and the reward of the shown feedback on that
    model at the default λ. They showed gpt-4o-mini at 0.87, where a new service spreads 0.03–0.33."""
    import json

    from bandit_router import Outcome, Request, Router

    text = (ROOT / name).read_text(encoding="utf-8")
    request = json.loads(re.search(r"""/v1/route [^\n]*\\\n\s*-d '(\{"prompt".*?\})'""", text).group(1))
    feedback = json.loads(re.sub(r'"decision_id": "[^"]*"', '"decision_id": "x"', re.search(
        r"""/v1/feedback [^\n]*\\\n\s*-d ["'](\{.*?\})["']\n""", text).group(1).replace('\\"', '"')))
    shown = re.search(r'"model": "([^"]+)", "probability": ([0-9.]+)', text)
    reward = float(re.search(r'"status": "applied", "reward": ([0-9.]+)', text).group(1))
    assert shown is not None
    model, probability = shown.group(1), float(shown.group(2))
    decision = next(d for seed in range(200) if (d := Router(seed=seed).route(Request(**request))).model == model)
    assert round(decision.probability, 2) == probability and probability == round(max(decision.pmf), 2)
    tokens = {k: feedback[k] for k in ("input_tokens", "output_tokens")}
    assert round(Router(seed=0).learn(decision, Outcome(quality=feedback["quality"], **tokens)), 3) == reward


def test_the_architecture_page_names_every_module_of_the_library() -> None:
    """docs/architecture.md is the map a newcomer reads to find where an idea lives: each module at the top of
    `bandit_router/` has its row (`bandit_router/<name>.py`), each subpackage too, and the packages whose row lists
    their modules (`service/`, `store/`, `log/`, `gateway/`, `cascade/`) name every one. Modules added since the
    page was written (`store/serverlock.py`, `service/metricsdir.py`, `service/protocol.py`, …) were on it nowhere."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "bandit_router"
    missing = [f"bandit_router/{p.name}" for p in sorted(package.glob("*.py"))
               if p.name != "__init__.py" and f"`bandit_router/{p.name}`" not in text]
    missing += [f"bandit_router/{p.name}/" for p in sorted(package.iterdir())
                if (p / "__init__.py").is_file() and f"`bandit_router/{p.name}/`" not in text]
    for listed in ("service", "store", "log", "gateway", "cascade"):
        row = next(line for line in text.splitlines() if line.startswith(f"| `bandit_router/{listed}/` |"))
        missing += [f"bandit_router/{listed}/{p.name}" for p in sorted((package / listed).glob("*.py"))
                    if p.name != "__init__.py" and f"`{p.name}`" not in row]
    assert missing == []


@pytest.mark.parametrize("name", ["library.md", "getting-started.md"])
def test_the_library_pages_name_every_field_of_the_values(name: str) -> None:
    """The library's values as the pages list them (`Request(…)`, `Decision`: …, `Outcome(…)`) name every field
    of the dataclasses: `Decision.created_at` and `expected_cost_usd` were missing."""
    from dataclasses import fields

    from bandit_router import Decision, Outcome, Request

    text = (DOCS / name).read_text(encoding="utf-8")
    for value in (Request, Decision, Outcome):
        entry = text.split(f"- `{value.__name__}", 1)[1].split("\n- ", 1)[0]
        missing = [f.name for f in fields(value) if not re.search(rf"\b{f.name}\b", entry)]
        assert missing == [], (value.__name__, missing)


def test_the_start_line_the_service_page_shows_is_the_one_a_start_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/service/index.md shows the line each start logs (`bandit-router: db=… policy=… …`): its keys, in order,
    are those of the line a SQLite service logs (it left out `synchronous`)."""
    import logging
    import warnings

    from bandit_router.config import Settings
    from bandit_router.service import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
        from fastapi.testclient import TestClient

    shown = re.search(r"`(bandit-router: db=[^`]+)`", (DOCS / "service" / "index.md").read_text(encoding="utf-8"))
    assert shown is not None
    with caplog.at_level(logging.INFO, logger="bandit_router.service"), \
            TestClient(create_app(Settings(db=tmp_path / "r.db"))):
        pass
    logged = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("bandit-router: db="))
    assert re.findall(r"(\w+)=", " ".join(shown.group(1).split())) == re.findall(r"(\w+)=", logged), logged


def test_every_parametrized_check_of_the_docs_has_its_cases() -> None:
    """The lists the tests above are parametrized over hold what the docs have: each test's own guard (`assert
    len(…) >= n`) ran only when its list was not empty, since an empty list skips a parametrized test."""
    counts = {"SHORT_SNIPPETS": (len(SHORT_SNIPPETS), 2), "TOML_BLOCKS": (len(TOML_BLOCKS), 8),
              "SIMULATE_COMMANDS": (len(SIMULATE_COMMANDS), 4), "DATABASE_COMMANDS": (len(DATABASE_COMMANDS), 4),
              "DOCTEST_MODULES": (len(DOCTEST_MODULES), 5), "ENV_EXAMPLES": (len(ENV_EXAMPLES), 4)}
    assert all(n >= least for n, least in counts.values()), counts
    assert all("http://127.0.0.1:8000/v1" in c for _, _, c in SHORT_SNIPPETS)
    assert sum(text.startswith(f"# {RULES_FILE}\n") for _, _, text in TOML_BLOCKS) >= 1  # a rules file's example
