"""A seeded `bandit-router simulate` run on the committed RouteLLM sample reproduces its committed summary.

Regenerate the expected numbers (only when a change of results is intended):
    .venv/bin/python tests/test_simulator_e2e.py --update
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bandit_router.cli import app

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "routellm_sample.csv.gz"
EXPECTED = DATA / "expected_summary.json"
ARGS = [
    "simulate",
    "--env",
    f"dataset:{SAMPLE}",
    "--policies",
    "default,vw-squarecb,linucb:alpha=0.3,dim=64,random,classifier,cascade:error=0.1,llm-router:accuracy=0.7",
    "--cost-weights",
    "0,10,40",
    "--seeds",
    "2",
    "--workers",
    "1",
    "--quiet",
]
COMPARED = ("results", "oracle", "fixed", "two_model", "aiq")
VOLATILE = {"steps_per_s", "ci95_steps_per_s"}


def run_simulate(out: Path, *extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*ARGS, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


def same(a: Any, b: Any, path: str = "") -> list[str]:
    """Differences between two summary trees (numbers to a relative 1e-7), ignoring timing fields."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a.keys() ^ b.keys())}"]
        return [d for k in a if k not in VOLATILE for d in same(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in same(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float | int):
        return [] if math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-12) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_seeded_run_reproduces_the_committed_summary(tmp_path: Path) -> None:
    data = run_simulate(tmp_path / "run", "--no-plots")
    expected = json.loads(EXPECTED.read_text())
    differences = [d for key in COMPARED for d in same(data[key], expected[key], key)]
    assert not differences, "\n".join(differences[:20])


def test_summary_has_the_documented_shape_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "run"
    data = run_simulate(out)
    assert data["schema"] == "bandit-router-simulation/1"
    assert {p.name for p in out.iterdir()} >= {
        "summary.json",
        "summary.md",
        "curves.json",
        "regret.png",
        "cost_quality.png",
        "shares.png",
        "strong_share.png",
    }
    policies = {r["policy"] for r in data["results"]}
    assert policies == {
        "default",
        "vw-squarecb",
        "linucb:alpha=0.3,dim=64",
        "random",
        "classifier",
        "cascade:error=0.1",
        "llm-router:accuracy=0.7",
    }
    assert len(data["results"]) == 7 * 3
    for r in data["results"] + data["oracle"] + data["fixed"]:
        for key in ("policy", "cost_weight", "seeds", "mean_reward", "mean_quality", "mean_cost_usd", "ci95_reward"):
            assert key in r
        for key in ("regret_per_request", "regret_per_request_second_half", "break_even_step", "break_even_never"):
            assert key in r
        assert sum(r["model_shares"].values()) == __import__("pytest").approx(1.0)
    assert {r["policy"] for r in data["fixed"]} == {"fixed:gpt-4-1106-preview", "fixed:mixtral-8x7b-instruct-v0.1"}
    assert data["two_model"]["strong"] == "gpt-4-1106-preview"
    assert "cpt50" in data["two_model"]["policies"]["vw-squarecb"]
    assert "## Two models" in (out / "summary.md").read_text()
    assert "regret/request, 2nd half | break-even step" in (out / "summary.md").read_text()


def test_every_config_key_is_accepted(tmp_path: Path) -> None:
    from simulator.cli import CONFIG_KEYS

    config = tmp_path / "run.toml"
    settings = {
        "env": f'"dataset:{SAMPLE}"',
        "scenarios": '["noisy-feedback"]',
        "policies": '["linucb", "random"]',
        "cost_weights": "[5, 20]",
        "seeds": "1",
        "first_seed": "3",
        "out": f'"{tmp_path / "out"}"',
        "steps": "100",
        "passes": "1",
        "split": '"task"',
        "train_value": '"mt_bench"',
        "eval_value": '"gsm8k"',
        "tasks": '["gsm8k", "mt_bench"]',
        "drop_flag": '"routellm_contaminated"',
        "context_columns": '["subtask"]',
        "prices": '"flat"',
        "warmup": '"bandit"',
        "window": "20",
        "workers": "1",
        "targets": '["avg_cost_usd=0.01"]',
        "plots": "false",  # both were refused as unknown keys, though every option was said to fit in the file
        "quiet": "true",
    }
    assert set(settings) == CONFIG_KEYS
    config.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    result = CliRunner().invoke(app, ["simulate", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output == "" and not list((tmp_path / "out").glob("*.png"))  # quiet, no plots
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["seeds"] == [3] and data["n_steps"] == 100 and data["warmup"] == "bandit"
    assert (
        data["env"]["price_fit"].startswith("flat") and 0 < data["env"]["train_prompts"] < 20
    )  # one MT-Bench row is flagged contaminated
    assert data["env"]["context_columns"] == ["subtask"]
    assert any(key.startswith("target:") for key in data["results"][0])


def test_cli_reports_bad_input_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["simulate", "--env", f"dataset:{SAMPLE}", "--out", str(tmp_path), "--scenario", "earthquake", "--quiet"]
    )
    assert result.exit_code == 2
    assert "unknown scenario" in result.output


def test_a_peer_whose_library_is_not_installed_is_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MABWiser is a dev dependency: after a plain `pip install`, `--policies mabwiser-linucb` (listed in the docs'
    policy table) was a ModuleNotFoundError traceback from inside the runs. It is a message saying what to install."""
    monkeypatch.setitem(sys.modules, "mabwiser", None)  # as if it were not installed
    result = CliRunner().invoke(app, ["simulate", "--env", f"dataset:{SAMPLE}", "--out", str(tmp_path / "out"),
                                      "--policies", "mabwiser-linucb", "--workers", "1", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "mabwiser-linucb needs MABWiser, which bandit-router does not install: pip install mabwiser" in (
        " ".join(result.output.split()))


def test_a_peer_whose_library_is_installed_but_broken_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A MABWiser whose own import fails (a dependency of its own missing) was told it is not installed and to
    `pip install mabwiser`, the original error hidden. The message is now that error."""
    fake = tmp_path / "site" / "mabwiser"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import a_missing_dependency_of_mabwiser\n")
    monkeypatch.delitem(sys.modules, "mabwiser", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    result = CliRunner().invoke(app, ["simulate", "--env", f"dataset:{SAMPLE}", "--out", str(tmp_path / "out"),
                                      "--policies", "mabwiser-linucb", "--workers", "1", "--quiet"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert ("mabwiser-linucb needs MABWiser, which is installed but fails to import: ModuleNotFoundError: "
            "No module named 'a_missing_dependency_of_mabwiser'") in message
    assert "pip install mabwiser" not in message


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_output_folder_that_cannot_be_written_is_named_before_the_runs(tmp_path: Path, where: str) -> None:
    """`--out` at a file (or under one) was a FileExistsError traceback, after every run had been paid for."""
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "run"
    result = CliRunner().invoke(app, [*ARGS, "--out", str(out), "--no-plots"])
    assert result.exit_code == 2, result.output
    assert "cannot create the folder" in " ".join(result.output.replace("│", " ").split())
    assert "runs of" not in result.output  # nothing ran


@pytest.mark.parametrize(("option", "message"), [
    ("--first-seed=-3", "seeds must be >= 0, got -3"),
    ("--window=0", "window must be >= 1, got 0"),  # ran, with every reaction time missing
    ("--workers=-2", "workers must be >= 1 (or left out: one per core), got -2"),  # ran on one worker
    ("--passes=0", "passes must be >= 1, got 0"),  # ran one pass
    # named no option: "expected one or more finite numbers >= 0, got '-1'"
    ("--cost-weights=-1", "--cost-weights: expected one or more finite numbers >= 0, got '-1'"),
    ("--cost-weights=abc", "--cost-weights: expected numbers, got 'abc'"),
])
def test_a_bad_number_is_a_message(tmp_path: Path, option: str, message: str) -> None:
    result = CliRunner().invoke(app, [*ARGS, option, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_a_single_cost_weight_in_a_config_file_is_one_lambda(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(f'env = "dataset:{SAMPLE}"\nout = "{tmp_path / "out"}"\ncost_weights = 5\npolicies = "random"\n'
                      'seeds = 1\nworkers = 1\n')
    result = CliRunner().invoke(app, ["simulate", "--config", str(config), "--quiet", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert {r["cost_weight"] for r in json.loads((tmp_path / "out" / "summary.json").read_text())["results"]} == {5.0}


@pytest.mark.parametrize(("line", "message"), [
    ('steps = "x"', "steps must be an integer, got 'x'"),
    ("seeds = 1.5", "seeds must be an integer, got 1.5"),
    ('steps = "--5"', "steps must be an integer, got '--5'"),
    ('window = "²"', "window must be an integer, got '²'"),
    ('policy = "linucb"', "unknown keys 'policy'; known: context_columns, cost_weights"),
    # a value of the wrong shape was a TypeError traceback ('int' object is not iterable)
    ("scenarios = 5", "scenarios must be a string or a list, got 5"),
    ("tasks = 5", "tasks must be a string or a list, got 5"),
    ("targets = { a = 1 }", "targets must be a string or a list, got {'a': 1}"),
    ("cost_weights = true", "cost_weights must be a number, a list or a string, got True"),
    ("cost_weights = [true, 5]", "cost_weights must be a number, a list or a string, got [True, 5]"),  # ran at λ = 1
    ("cost_weights = [-1]", "cost_weights in --config: expected one or more finite numbers >= 0, got [-1]"),
    # a string option of another type was an AttributeError or TypeError traceback
    ("split = 5", "split must be a string, got 5"),
    ('drop_flag = ["routellm_contaminated"]', "drop_flag must be a string, got ['routellm_contaminated']"),
    ('warmup = ["full"]', "warmup must be a string, got ['full']"),
    ("train_value = 1", "train_value must be a string, got 1"),
])
def test_a_bad_config_file_is_a_message_naming_the_key(tmp_path: Path, line: str, message: str) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(f'env = "dataset:{SAMPLE}"\nout = "{tmp_path / "out"}"\n{line}\n')
    result = CliRunner().invoke(app, ["simulate", "--config", str(config), "--quiet", "--no-plots"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.replace("│", " ").split())
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_command_line_wins_over_plots_and_quiet_in_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(f'env = "dataset:{SAMPLE}"\npolicies = "random"\nsteps = 20\nworkers = 1\nplots = false\n'
                      "quiet = true\n")
    result = CliRunner().invoke(app, ["simulate", "--config", str(config), "--out", str(tmp_path / "out"), "--plots"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "regret.png").exists() and "runs of 20 steps" not in result.output  # still quiet
    result = CliRunner().invoke(app, ["simulate", "--config", str(config), "--out", str(tmp_path / "o2"), "--quiet"])
    assert not (tmp_path / "o2" / "regret.png").exists()
    result = CliRunner().invoke(app, ["simulate", "--config", str(config), "--out", str(tmp_path / "o4"), "--no-quiet"])
    assert result.exit_code == 0 and "runs of 20 steps" in result.output  # `quiet = true` undone (review)
    config.write_text(f'env = "dataset:{SAMPLE}"\nplots = "no"\n')
    result = CliRunner().invoke(app, ["simulate", "--config", str(config), "--out", str(tmp_path / "o3")])
    assert result.exit_code == 2 and "plots must be true or false, got 'no'" in result.output


@pytest.mark.parametrize("value", ['["runs"]', "true"])
def test_an_out_that_is_no_string_is_a_message(tmp_path: Path, value: str) -> None:
    """`out = ["runs"]` was a TypeError traceback (`expected str, bytes or os.PathLike object, not list`)."""
    config = tmp_path / "sim.toml"
    config.write_text(f'env = "dataset:{SAMPLE}"\nout = {value}\n')
    result = CliRunner().invoke(app, ["simulate", "--config", str(config), "--quiet", "--no-plots"])
    assert result.exit_code == 2, result.output
    assert "out must be a string, got" in " ".join(result.output.replace("│", " ").split())


if __name__ == "__main__":
    if "--update" in sys.argv:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            summary = run_simulate(Path(folder), "--no-plots")
        EXPECTED.write_text(json.dumps({k: summary[k] for k in COMPARED}, indent=1) + "\n")
        print(f"wrote {EXPECTED}")


def test_simulate_help_shows_defaults_and_required_options() -> None:
    from typer.testing import CliRunner

    from bandit_router.cli import app

    text = " ".join(CliRunner().invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"}).stdout.split())
    for shown in ("(default: vw-squarecb)", "(default: 20)", "(default: 1)", "(default: 200)", "(required: here"):
        assert shown in text, shown


@pytest.mark.parametrize(("given", "missing"), [
    (["--env", "synthetic:default"], "--out is required"),
    (["--out", "runs/x"], "--env is required"),
    ([], "--env and --out are required"),
])
def test_simulate_names_the_required_option_that_is_missing(given: list[str], missing: str) -> None:
    """`simulate --env synthetic:default` said "--env and --out are required", though --env was given: the message
    names what is missing, and what to give."""
    result = CliRunner().invoke(app, ["simulate", *given], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())
    assert missing in text and "--out a folder for the results" in text, text


def test_terminal_report_gives_regret_per_request_and_break_even(tmp_path: Path) -> None:
    args = [a for a in ARGS if a != "--quiet"]
    i = args.index("--policies")
    args[i + 1] = "default,random"
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--no-plots"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.strip().startswith("default") and "λ=10" in x)
    assert "regret +" in line or "regret -" in line
    assert "break-even" in line


def test_the_break_even_text_says_what_it_counts() -> None:
    """`break-even never (3)` left a reader of the terminal report to guess that 3 counted seeds."""
    from simulator.summary_md import break_even_text

    assert break_even_text({"break_even_step": None, "break_even_never": 3, "n_seeds": 3}) == "never (3 of 3 seeds)"
    some = {"break_even_step": 812.0, "break_even_never": 1, "n_seeds": 5}
    assert break_even_text(some) == "812 (1 of 5 seeds never)"
    assert break_even_text({"break_even_step": 812.0, "break_even_never": 0, "n_seeds": 5}) == "812"
    assert break_even_text({"break_even_step": None, "break_even_never": 0, "n_seeds": 1}) == "–"


def test_terminal_report_shows_reaction_times_and_targets(tmp_path: Path) -> None:
    args = ["simulate", "--env", "synthetic:default", "--scenario", "outage", "--policies", "random", "--steps",
            "600", "--seeds", "1", "--target", "avg_cost_usd=0.002", "--out", str(tmp_path / "run"), "--no-plots",
            "--workers", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "reaction to outage: " in result.output
    assert "target avg_cost_usd=0.002: realised " in result.output


def test_summary_numbers_are_rounded_to_meaningful_digits() -> None:
    from simulator.summary_md import _pm, _steps

    assert _pm(0.5, 9.7e-17) == "0.5000 ± 0.0000"
    assert _pm(0.81234, 0.01234) == "0.8123 ± 0.0123"
    assert _steps(42.0, 13.4019) == "42 ± 13"
    assert _steps(1234.4, None) == "1,234"


@pytest.mark.parametrize(("costs", "qualities"), [
    ((0.0, 0.0), ((1, 0), (0, 1), (1, 1), (1, 0))),  # free models: a ZeroDivisionError traceback after every run
    ((0.01, 0.001), ((1, 1), (0, 0), (1, 1), (1, 1))),  # equally good: numpy's divide-by-zero warnings
])
def test_two_free_or_equally_good_models_give_a_report_without_the_undefined_numbers(
    tmp_path: Path, costs: tuple[float, float], qualities: tuple[tuple[int, int], ...]
) -> None:
    table = tmp_path / "two.csv"
    rows = [f"{i},prompt number {i},t,{qa},{costs[0]},{qb},{costs[1]}" for i, (qa, qb) in enumerate(qualities)]
    table.write_text("prompt_id,prompt,task,quality_a,cost_a,quality_b,cost_b\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    args = ["simulate", "--env", f"dataset:{table}", "--policies", "random", "--cost-weights", "0,10", "--seeds", "2"]
    result = CliRunner().invoke(app, [*args, "--workers", "1", "--quiet", "--out", str(out)])  # warnings are errors
    assert result.exit_code == 0, result.output
    assert {"summary.json", "summary.md", "cost_quality.png", "strong_share.png"} <= {p.name for p in out.iterdir()}
    two = json.loads((out / "summary.json").read_text())["two_model"]["policies"]
    section = (out / "summary.md").read_text().split("## Two models")[1].split("## AIQ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| random | "))
    if costs == (0.0, 0.0):  # no cost to save relative to a free strong model
        assert two["random"]["cost_saving_at_95"]["mean"] is None
        assert row.endswith("| undefined (free strong model) |")  # was "– (2 never)"
        assert "The cost saving is undefined: the strong model costs nothing" in section
    else:  # no gap between the models to recover
        assert two["random"]["apgr"]["mean"] is None and two["oracle"]["apgr_trapz"]["mean"] is None
        # both were "– (2 never)", as if the curve never reached a level; APGR has no level, it has no meaning here
        assert row.startswith("| random | undefined (no quality gap) | undefined (no quality gap) |")
        # CPT read 0.000 ± 0.000 (every level of an undefined PGR "reached" at no strong call): undefined too
        for key in ("cpt50", "cpt80"):
            assert two["random"][key] == two["oracle"][key] == {"mean": None, "ci95": None, "n_missing": 2}
        assert row.split(" | ")[3:5] == ["undefined (no quality gap)"] * 2
        assert ("PGR, APGR and CPT are undefined in 2 of 2 seed(s): there the strong model is not better (q_strong ≤ "
                "q_weak), so there is no quality gap to recover (the same mean quality in 2 seed(s))." in section)


def test_a_seed_where_the_strong_model_is_worse_has_no_cpt_and_says_so(tmp_path: Path) -> None:
    """Two models 0.62 and 0.60 good on average, 30 prompts a seed: in one of 8 seeds the model called strong (the
    better over all seeds) is worse, and its CPT read 0.0 (every PGR level "reached" with no strong call), pulling
    the mean down without a word. It is undefined there now, and summary.md says in how many seeds and why."""
    import random

    rng = random.Random(3)
    rows = [f"{i},prompt {i} about {rng.choice(['x', 'y', 'z'])},t,{rng.random() < 0.62:d},0.01,"
            f"{rng.random() < 0.6:d},0.001" for i in range(400)]  # fmt: skip
    table = tmp_path / "two.csv"
    table.write_text("prompt_id,prompt,task,quality_a,cost_a,quality_b,cost_b\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    args = ["simulate", "--env", f"dataset:{table}", "--policies", "random", "--cost-weights", "0,10", "--seeds", "8",
            "--steps", "30", "--workers", "1", "--quiet", "--no-plots", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    two = json.loads((out / "summary.json").read_text())["two_model"]
    assert two["strong"] == "a" and two["n_seeds_strong_worse"] == 1 and two["n_seeds_equal_quality"] == 0
    for policy in ("random", "oracle"):
        assert all(two["policies"][policy][k]["n_missing"] == 1 for k in ("apgr", "apgr_trapz", "cpt50", "cpt80"))
    assert ("PGR, APGR and CPT are undefined in 1 of 8 seed(s): there the strong model is not better (q_strong ≤ "
            "q_weak), so there is no quality gap to recover (strong model worse in 1 seed(s), though better over "
            "all seeds).") in (out / "summary.md").read_text()


def test_a_fixed_policy_that_is_also_a_baseline_is_one_row_of_the_summary(tmp_path: Path) -> None:
    """`--policies fixed:<m>` was two identical rows of each λ's table in summary.md: the policy's and the fixed
    baseline's, which every run reports. summary.json keeps both lists (its `results` and `fixed`) as they were."""
    out = tmp_path / "run"
    policies = "fixed:gpt-4-1106-preview,fixed:model=mixtral-8x7b-instruct-v0.1,random"
    args = ["--policies", policies, "--cost-weights", "0,10", "--seeds", "1", "--workers", "1", "--steps", "60"]
    result = CliRunner().invoke(app, [*ARGS[:3], *args, "--quiet", "--no-plots", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "summary.json").read_text())
    sections = (out / "summary.md").read_text().split("## ")
    for lam, section in zip((0, 10), [s for s in sections if s.startswith("λ = ")], strict=True):
        names = [line.split(" | ")[0].removeprefix("| ") for line in section.splitlines() if line.startswith("| ")]
        assert names.count("fixed:gpt-4-1106-preview") == 1 and "fixed:mixtral-8x7b-instruct-v0.1" not in names
        assert names.count("fixed:model=mixtral-8x7b-instruct-v0.1") == 1 and {"oracle", "random"} <= set(names)
        mine = next(r for r in data["results"] if r["policy"] == "fixed:gpt-4-1106-preview" and r["cost_weight"] == lam)
        row = next(line for line in section.splitlines() if line.startswith("| fixed:gpt-4-1106-preview |"))
        assert row.split(" | ")[1] == f"{mine['mean_reward']:.4f}"
    assert [r["policy"] for r in data["fixed"]].count("fixed:gpt-4-1106-preview") == 2  # one per λ, as before


def test_a_report_that_cannot_be_written_is_a_message_and_leaves_the_previous_one(tmp_path: Path) -> None:
    """A full disk (here: a file-size limit, the same OSError from write) while writing the report was a
    traceback with exit status 1. It is a message naming the folder and the reason, exit status 2, and the report
    written there before is as it was, with no staging folder left."""
    import resource
    import signal
    import subprocess

    out = tmp_path / "run"
    run_simulate(out, "--no-plots", "--steps", "40", "--cost-weights", "10")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def limit_file_size() -> None:  # EFBIG from write() once a file passes 4 KB, as ENOSPC from a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    command = [sys.executable, "-m", "bandit_router.cli", *ARGS[:-1], "--no-plots", "--steps", "60", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=limit_file_size, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert (f"bandit-router simulate: {out}: the report could not be written: File too large; nothing in the "
            "folder was changed") in done.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_split_values_with_a_random_split_are_refused_with_exit_status_2(tmp_path: Path) -> None:
    """They were ignored: the run went on with a random half for training, whatever values were given."""
    out = tmp_path / "run"
    extra = ["--split", "random:0.5", "--train-value", "train", "--eval-value", "dev", "--steps", "40"]
    result = CliRunner().invoke(app, [*ARGS, *extra, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "--train-value 'train' and --eval-value 'dev' name values of a split column" in result.output
    assert not out.exists()


def test_split_values_from_a_config_file_are_refused_naming_its_keys(tmp_path: Path) -> None:
    """Values given in the config file (for `split = "task"`), refused with `--split random:0.5` on the command
    line: the message said "--train-value 't' … leave them out", flags the user never typed. It names the file's
    keys now, and the flag that was given."""
    config = tmp_path / "run.toml"
    config.write_text(f'env = "dataset:{SAMPLE}"\nsplit = "task"\ntrain_value = "t"\neval_value = "u"\n')
    out = tmp_path / "run"
    args = ["simulate", "--config", str(config), "--split", "random:0.5", "--policies", "random", "--seeds", "1",
            "--no-plots", "--quiet", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())  # typer's box wraps long messages
    assert ("train_value = 't' in --config and eval_value = 'u' in --config name values of a split column (--split "
            "split_routerdc, or --split task), but --split random:0.5 draws a seeded random share") in output
    assert "leave them out (of the config file), or give the column with --split" in output
    assert "--train-value" not in output and not out.exists()


def test_a_datasets_options_on_a_synthetic_world_are_refused_named_as_given(tmp_path: Path) -> None:
    """`--task math` on `synthetic:default` was refused as "synthetic worlds take no options, got ['tasks']": the
    simulator's inner name, not the flag the user typed (nor the config key). The flags and keys are named as given."""
    config = tmp_path / "run.toml"
    config.write_text('drop_flag = "x"\n')
    out = tmp_path / "run"
    args = ["simulate", "--env", "synthetic:default", "--config", str(config), "--task", "math", "--task", "code",
            "--train-value", "t", "--steps", "20", "--seeds", "1", "--no-plots", "--quiet", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert ("bandit-router simulate: --train-value 't', --task 'math' --task 'code', drop_flag = 'x' in --config: "
            "options of a dataset (--env dataset:PATH); synthetic:default is a synthetic world, which takes "
            "none") in output, output
    assert not out.exists()


def test_a_reaction_period_shorter_than_the_window_says_why_it_is_never(tmp_path: Path) -> None:
    """An outage of 100 steps with the default 200-step window: no window of decisions fits in it, so its reaction
    time is missing whatever the policy did, and every output said only "never" (the legend, in general terms).
    The terminal, summary.md and summary.json say why now; a period the window fits in has no such fields."""
    out = tmp_path / "run"
    args = ["simulate", "--env", "synthetic:default", "--scenario", "outage:at=0.4,until=0.5", "--scenario",
            "drift:at=0.7", "--policies", "random", "--steps", "1000", "--seeds", "2", "--no-plots", "--workers", "1",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    short = "the period after the event, 100 steps, is shorter than the 200-step window"
    assert f"reaction to outage: never: {short} (a --window of 100 or less measures it)" in result.output
    data = json.loads((out / "summary.json").read_text())
    reaction = data["results"][0]["reaction"]
    assert reaction["outage"] == {"mean": None, "ci95": None, "n_missing": 2, "n_period_shorter_than_window": 2,
                                  "period_steps": 100}
    assert set(reaction["drift"]) == {"mean", "ci95", "n_missing"}  # 300 steps: measured, as before
    row = next(line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| random | 20 |"))
    assert row.split(" | ")[2] == f"– (2 never: {short})"
    result = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "narrow"), "--window", "100"])
    assert result.exit_code == 0, result.output
    reaction = json.loads((tmp_path / "narrow" / "summary.json").read_text())["results"][0]["reaction"]
    assert set(reaction["outage"]) == {"mean", "ci95", "n_missing"} and "shorter than" not in result.output


def test_an_event_at_the_end_of_the_run_says_so_without_a_window_hint(tmp_path: Path) -> None:
    """A drift at the last step has a period of 0 steps: the hint "a --window of 0 or less measures it" named a
    window that is refused; it says that the event falls at the end of the run now, in the terminal and summary.md."""
    out = tmp_path / "run"
    args = ["simulate", "--env", "synthetic:default", "--scenario", "drift:at=1000", "--policies", "random",
            "--steps", "1000", "--seeds", "1", "--no-plots", "--workers", "1", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    end = "the event falls at the end of the run (no step after it to measure)"
    assert f"reaction to drift: never: {end}\n" in result.output and "--window of" not in result.output
    reaction = json.loads((out / "summary.json").read_text())["results"][0]["reaction"]["drift"]
    assert reaction["period_steps"] == 0
    assert f"(1 never: {end})" in (out / "summary.md").read_text()


def test_a_reaction_never_measured_in_some_seeds_says_in_how_many_the_period_was_too_short() -> None:
    from simulator.summary_md import _reaction_never

    entry = {"mean": 40.0, "ci95": None, "n_missing": 3, "n_period_shorter_than_window": 2, "period_steps": 90}
    assert _reaction_never(entry, 200) == (" (3 never; in 2: the period after the event, 90 steps, is shorter than "
                                           "the 200-step window)")
    assert _reaction_never({"mean": 40.0, "ci95": None, "n_missing": 1}, 200) == " (1 never)"
