"""`--out`: a command that fails leaves nothing it created (`bandit_router.outputs`), and never removes what was
there before; the run-time failures of `evaluate`, `export` and `simulate` are checked through the commands."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
    from fastapi.testclient import TestClient

from bandit_router.cli import app as cli_app
from bandit_router.config import Settings
from bandit_router.outputs import file_problem, out_problem, writing, writing_file
from bandit_router.service import create_app


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_a_failed_block_removes_the_folders_it_created_and_only_those(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), writing(tmp_path / "a" / "b" / "c") as folder:
        (folder / "half.json").write_text("{")
        raise RuntimeError("the report failed")
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "old.md").write_text("from an earlier run")
    with pytest.raises(RuntimeError), writing(kept / "new") as folder:
        raise RuntimeError
    assert _tree(tmp_path) == {"kept": None, "kept/old.md": b"from an earlier run"}
    with writing(tmp_path / "done") as folder:
        (folder / "r.json").write_text("{}")
    assert (tmp_path / "done" / "r.json").read_text() == "{}"


def test_a_failed_file_is_removed_unless_it_was_there(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), writing_file(tmp_path / "x" / "log.dsjson") as fp:
        fp.write("{}\n")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "log.dsjson"
    old.write_text("old\n")
    old.chmod(0o640)
    with pytest.raises(RuntimeError), writing_file(old) as fp:
        fp.write("half of a new export\n")
        raise RuntimeError
    assert old.read_text() == "old\n"  # a failure after it was opened leaves it as it was, not emptied or half new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.dsjson"]  # no partial file left beside it
    with writing_file(old) as fp:
        fp.write("new\n")
    assert old.read_text() == "new\n" and old.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.dsjson"]


def test_out_problem_creates_nothing(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert out_problem(tmp_path / "new" / "deeper") is None
    assert file_problem(tmp_path / "new" / "log.dsjson") is None and file_problem(taken) is None
    assert file_problem(tmp_path) == f"cannot write the file: {os.strerror(21)}"
    assert file_problem(taken / "log.dsjson") == f"cannot create the folder: {os.strerror(17)}"  # taken is a file
    assert out_problem(taken) == f"cannot create the folder: {os.strerror(17)}"
    assert out_problem(taken / "eval") == f"cannot create the folder: {os.strerror(20)}"
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert out_problem(locked) == "the folder is not writable"
        assert out_problem(locked / "x") == f"cannot create the folder: {os.strerror(13)}"
    assert sorted(p.name for p in tmp_path.iterdir()) in (["taken"], ["locked", "taken"])


@pytest.fixture(scope="module")
def logged_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A service database with a few decisions with feedback."""
    db = tmp_path_factory.mktemp("db") / "service.db"
    with TestClient(create_app(Settings(db=db, seed=1))) as client:
        while client.get("/readyz").status_code != 200:
            pass
        for i in range(5):
            decision = client.post("/v1/route", json={"prompt": f"hello {i}"}).json()
            client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.5})
    return db


@pytest.mark.parametrize(("args", "message"), [
    (["evaluate", "-C", "fixed:gpt-5"], "'gpt-5' is not a model of the log"),
    (["evaluate", "--escalations"], "holds no learned chain with feedback"),
    (["export", "--label", "bogus"], "label"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_command_that_fails_at_run_time_leaves_no_out_folder(
    logged_db: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    """`evaluate -C fixed:gpt-5 --out eval/` (refused once the log is read) left an empty eval/ behind, and so did
    `evaluate --escalations` on a log without chains; `export --out a/b/log.dsjson` left a/b/ and an empty file."""
    out = tmp_path / "a" / "b" / ("log.dsjson" if args[0] == "export" else "eval")
    result = CliRunner().invoke(cli_app, [*args, "--db", str(logged_db), "--out", str(out)])
    assert result.exit_code != 0, result.output
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_simulate_that_fails_at_run_time_leaves_no_out_folder(tmp_path: Path) -> None:
    """`simulate --target share:gpt-4o-mni=0.1` (a typo, refused once the run's models are known) left an empty
    `--out` folder behind; a folder that was there stays, with what was in it."""
    args = ["simulate", "--env", "synthetic:default", "--policies", "random", "--steps", "50", "--seeds", "1",
            "--workers", "1", "--no-plots", "--quiet", "--target", "share:gpt-4o-mni=0.1", "--out"]
    result = CliRunner().invoke(cli_app, [*args, str(tmp_path / "runs" / "sim")])
    assert result.exit_code == 2, result.output
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("keep")
    assert CliRunner().invoke(cli_app, [*args, str(tmp_path / "mine")]).exit_code == 2
    assert _tree(tmp_path) == {"mine": None, "mine/notes.md": b"keep"}


def test_a_simulate_report_that_fails_halfway_leaves_the_previous_report_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun into a folder that held a report wrote the new summary.json, summary.md and curves.json over the old
    ones and then failed in a plot (here a full disk; Ctrl-C in the slow plots alike): the folder held the new
    numbers beside the old run's plots. A report that succeeds replaces all of the previous one: `--no-plots`
    left the old plots beside the new numbers."""
    from simulator import plots

    out = tmp_path / "sim"
    sample = Path(__file__).parent / "data" / "routellm_sample.csv.gz"
    args = ["simulate", "--env", f"dataset:{sample}", "--steps", "50", "--workers", "1", "--quiet", "--out", str(out)]
    assert CliRunner().invoke(cli_app, [*args, "--policies", "random"]).exit_code == 0
    before = _tree(out)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "plot_shares", full_disk)
    result = CliRunner().invoke(cli_app, [*args, "--policies", "linucb"])
    assert result.exit_code == 2, result.output  # a message, not the OSError's traceback
    assert f"{out}: the report could not be written: No space left on device; nothing in the folder was changed" in (
        result.output
    )
    assert _tree(out) == before  # nothing of the failed report, nothing left beside it
    monkeypatch.undo()
    assert CliRunner().invoke(cli_app, [*args, "--policies", "linucb", "--no-plots"]).exit_code == 0
    assert sorted(_tree(out)) == ["curves.json", "summary.json", "summary.md"]  # strong_share.png went too
    assert '"policy": "linucb"' in (out / "summary.json").read_text()


SIMULATE_RANDOM = ["simulate", "--env", "synthetic:default", "--steps", "50", "--seeds", "1", "--policies", "random",
                   "--cost-weights", "20", "--workers", "1", "--quiet"]


def test_a_simulate_report_removes_only_the_files_a_previous_report_wrote(tmp_path: Path) -> None:
    """Review: a report that drew no plots (`--no-plots`, fewer than two models) removed every file in `--out` named
    like a plot, the user's own regret.png too; it removes only those the previous report's summary.json lists."""
    out = tmp_path / "sim"
    out.mkdir()
    (out / "regret.png").write_bytes(b"the user's own plot")
    (out / "notes.md").write_text("keep")
    result = CliRunner().invoke(cli_app, [*SIMULATE_RANDOM, "--out", str(out), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert (out / "regret.png").read_bytes() == b"the user's own plot"
    assert json.loads((out / "summary.json").read_text())["files"] == ["summary.md", "curves.json", "summary.json"]
    assert CliRunner().invoke(cli_app, [*SIMULATE_RANDOM, "--out", str(out)]).exit_code == 0
    drawn = json.loads((out / "summary.json").read_text())["files"]
    assert {"regret.png", "shares.png"} <= set(drawn) and (out / "shares.png").exists()
    assert CliRunner().invoke(cli_app, [*SIMULATE_RANDOM, "--out", str(out), "--no-plots"]).exit_code == 0
    assert sorted(_tree(out)) == ["curves.json", "notes.md", "summary.json", "summary.md"]  # its plots went


def test_a_simulate_report_writes_through_a_symlink_and_keeps_a_file_s_permissions(tmp_path: Path) -> None:
    """Review: a rerun replaced a symlinked summary.json by a plain file and made a 0600 summary.md 0644, where
    `writing_file` writes through a symlink and keeps the permissions of the file it replaces."""
    out = tmp_path / "sim"
    out.mkdir()
    kept = tmp_path / "kept.json"
    (out / "summary.json").symlink_to(kept)
    (out / "summary.md").write_text("private")
    (out / "summary.md").chmod(0o600)
    assert CliRunner().invoke(cli_app, [*SIMULATE_RANDOM, "--out", str(out), "--no-plots"]).exit_code == 0
    assert (out / "summary.json").is_symlink()
    assert json.loads(kept.read_text())["files"][-1] == "summary.json"
    assert (out / "summary.md").stat().st_mode & 0o777 == 0o600
    assert (out / "summary.md").read_text().startswith("#")


@pytest.mark.parametrize("blocker", ["dangling symlink", "folder", "symlink loop", "symlink through a file"])
def test_a_report_file_that_cannot_be_written_through_leaves_the_previous_report(tmp_path: Path, blocker: str) -> None:
    """A summary.json that is a symlink into a folder that is gone (or a folder of that name, or a symlink loop)
    failed only when its turn came to be put in place: summary.md and curves.json of the new report were in place
    by then, beside the previous report's other files. It fails before any file is moved now, leaving the previous
    report as it was."""
    out = tmp_path / "sim"
    assert CliRunner().invoke(cli_app, [*SIMULATE_RANDOM, "--out", str(out), "--no-plots"]).exit_code == 0
    (out / "summary.json").unlink()
    if blocker == "folder":
        (out / "summary.json").mkdir()
        reason = "Is a directory (summary.json)"
    elif blocker == "symlink loop":  # passed the check and failed halfway, after curves.json and summary.md moved
        (out / "summary.json").symlink_to("summary.json")
        reason = "Too many levels of symbolic links: a symlink loop (summary.json)"
    elif blocker == "symlink through a file":  # review: ENOTDIR read "a symlink loop"
        (tmp_path / "notes.txt").write_text("a file, not a folder")
        (out / "summary.json").symlink_to(tmp_path / "notes.txt" / "summary.json")
        reason = f"No such file or directory: {tmp_path / 'notes.txt'}, its target's folder (summary.json)"
    else:
        (out / "summary.json").symlink_to(tmp_path / "gone" / "summary.json")
        reason = f"No such file or directory: {tmp_path / 'gone'}, its target's folder (summary.json)"
    before = _tree(out)
    result = CliRunner().invoke(cli_app, [*SIMULATE_RANDOM, "--out", str(out), "--no-plots", "--policies", "linucb"])
    assert result.exit_code == 2, result.output
    assert f"{out}: the report could not be written: {reason}; nothing in the folder was changed" in result.output
    assert _tree(out) == before


def test_a_simulate_report_stopped_by_sigterm_leaves_the_previous_report_and_no_staging_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: a report killed by SIGTERM (`kill`, a CI timeout) while writing left its hidden `.report-*.partial`
    folder in `--out` for good: the clean-ups ran on exceptions only. SIGTERM is an exit (status 143) that runs them,
    and a report removes the staging folders a report killed outright (SIGKILL) left, and no other folder."""
    import signal
    import time

    from simulator import plots

    out = tmp_path / "sim"
    args = [*SIMULATE_RANDOM, "--out", str(out)]
    assert CliRunner().invoke(cli_app, args).exit_code == 0
    before = _tree(out)
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))  # not pytest's death
    try:
        def terminated(*args: object, **kwargs: object) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs here

        monkeypatch.setattr(plots, "plot_shares", terminated)
        result = CliRunner().invoke(cli_app, args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (result.exit_code, received) == (143, []), result.output
    assert _tree(out) == before
    monkeypatch.undo()
    (out / ".report-k1ll3d_0.partial").mkdir()  # as SIGKILL leaves it
    (out / ".report-k1ll3d_0.partial" / "summary.md").write_text("half")
    (out / ".report-notes").mkdir()
    assert CliRunner().invoke(cli_app, [*args, "--no-plots"]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [".report-notes", "curves.json", "summary.json", "summary.md"]


def test_export_that_fails_keeps_what_the_file_that_was_there_held(logged_db: Path, tmp_path: Path) -> None:
    """Review: `export --out log.dsjson --label bogus` over an earlier export: `writing_file` opens the file with
    "w" (truncating it) before `export_dsjson` refuses the label, so the earlier export is lost; "a file that was
    there stays" held only for its name (the unit test above checks `exists()`, not the content)."""
    old = tmp_path / "log.dsjson"
    old.write_text('{"an": "earlier export"}\n')
    result = CliRunner().invoke(cli_app, ["export", "--label", "bogus", "--db", str(logged_db), "--out", str(old)])
    assert result.exit_code != 0, result.output
    assert old.read_text() == '{"an": "earlier export"}\n'


def test_a_failed_file_leaves_a_symlink_that_was_there(tmp_path: Path) -> None:
    """Review: a dangling symlink at `--out` (a link to where exports go, not made yet) is not `exists()`, so
    `writing_file` took the path as its own: the export was written through the link and, on failure, the user's
    link was unlinked (while the file made at its target stayed)."""
    link = tmp_path / "log.dsjson"
    link.symlink_to(tmp_path / "target.dsjson")
    with pytest.raises(RuntimeError), writing_file(link) as fp:
        fp.write("{}\n")
        raise RuntimeError
    assert link.is_symlink()


def test_a_folder_another_program_made_meanwhile_is_not_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: `writing` decides which folder it creates (`exists()`), then `mkdir(exist_ok=True)`: a folder another
    program made in between (here: just before the mkdir) is taken for its own and removed with what is in it."""
    shared = tmp_path / "shared"
    mkdir = Path.mkdir

    def racing(self: Path, *args: object, **kwargs: object) -> None:
        if not shared.exists():  # the other program wins the race
            mkdir(shared)
            (shared / "theirs.json").write_text("{}")
        mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", racing)
    with pytest.raises(RuntimeError), writing(shared / "mine"):
        raise RuntimeError
    monkeypatch.undo()
    assert (shared / "theirs.json").exists()


@pytest.mark.parametrize("command", ["evaluate", "export", "simulate"])
def test_an_out_under_a_folder_it_may_not_search_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Review: `out_problem` asks `is_dir()`/`exists()`, which raise PermissionError (not False) under a folder this
    process may not search (`--out /root/x` for a user): a traceback, exit status 1, where `mkdir` in a try had
    said "cannot create the folder: Permission denied". Root searches every folder, so stat is refused here as
    the kernel refuses it to another user."""
    locked = tmp_path / "locked"
    stat = Path.stat

    def refused(self: Path, *args: object, **kwargs: object) -> os.stat_result:
        if str(self).startswith(str(locked) + os.sep):
            raise PermissionError(13, os.strerror(13), str(self))
        return stat(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", refused)
    out = locked / ("log.dsjson" if command == "export" else "out")
    args = {"evaluate": ["evaluate", "-C", "random", "--db", str(tmp_path / "none.db")],
            "export": ["export", "--db", str(tmp_path / "none.db")],
            "simulate": ["simulate", "--env", "synthetic:default", "--policies", "random", "--steps", "5",
                         "--seeds", "1", "--workers", "1", "--no-plots", "--quiet"]}[command]
    result = CliRunner().invoke(cli_app, [*args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert os.strerror(13) in result.output and not isinstance(result.exception, PermissionError)
