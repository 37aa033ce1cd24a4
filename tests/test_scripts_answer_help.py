"""Every runnable experiment script and benchmark tool answers `--help` with its usage and exits 0 without doing
its work, and the benchmark tools' shared report header (`benchmarks.provenance`) states what it claims."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import runpy
import sys
from pathlib import Path

import pytest

from benchmarks import provenance

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    p for p in [*ROOT.glob("experiments/*/*.py"), *ROOT.glob("benchmarks/*.py")]
    if 'if __name__ == "__main__"' in p.read_text()
)


def test_there_are_scripts_to_check() -> None:
    assert len(SCRIPTS) >= 30, [str(p) for p in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_script_answers_help_without_running(script: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.syspath_prepend(str(script.parent))  # as `python script.py` does: its folder's modules import
    monkeypatch.chdir(tmp_path)  # anything a script wrongly wrote before parsing would land here, not in the tree
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        runpy.run_path(str(script), run_name="__main__")
    assert exited.value.code in (0, None)
    assert "usage:" in out.getvalue()
    assert list(tmp_path.iterdir()) == []


def test_the_report_header_and_its_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = provenance.machine()
    assert "cores (shared with other work), Python " in line and line[:4].isdigit()
    assert provenance.load_note(0.5) == "load average 0.50 at the start"
    assert provenance.load_note(0.5, 1.25) == "load average 0.50 at the start, 1.25 at the end"
    path = provenance.write_report(tmp_path / "new", "x-a.md", ["# A", "", "b"])
    assert path == tmp_path / "new" / "x-a.md" and path.read_text() == "# A\n\nb\n"
    assert capsys.readouterr().out == "# A\n\nb\n"
    provenance.write_report(tmp_path / "new", "x-b.md", ["c"], echo=False)
    assert capsys.readouterr().out == "" and (tmp_path / "new" / "x-b.md").read_text() == "c\n"


def test_the_shared_arguments() -> None:
    parser = argparse.ArgumentParser()
    provenance.add_output_arguments(parser, "x-LABEL.md", duration=6)
    args = parser.parse_args(["--label", "a"])
    assert (args.label, args.duration, Path(args.out)) == ("a", 6, provenance.PROFILES)
    bare = argparse.ArgumentParser()
    provenance.add_output_arguments(bare, "x-LABEL.md")
    assert not hasattr(bare.parse_args(["--label", "a"]), "duration")
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        bare.parse_args([])  # --label is required


def test_every_benchmark_module_make_bench_runs_has_a_run_function() -> None:
    """`make bench` (`benchmarks.run`) imports every `benchmarks/bench_*.py` and calls its `run()`, one after another:
    `bench_catalog_size.py` had only a `main()`, so `make bench` stopped with an AttributeError before the modules
    after it (alphabetically) had run."""
    modules = sorted(ROOT.glob("benchmarks/bench_*.py"))
    assert len(modules) >= 9
    for path in modules:
        module = importlib.import_module(f"benchmarks.{path.stem}")
        assert callable(getattr(module, "run", None)), f"{path.name} has no run() for benchmarks.run"
