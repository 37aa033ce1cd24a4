"""Environments, scenarios, agents: bandit feedback only, holes never crash, the truth is exact."""

from __future__ import annotations

import codecs
import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bandit_router.budgets import BudgetConfig
from bandit_router.catalog import ModelSpec
from bandit_router.errors import ConfigError, InvalidInput
from bandit_router.policies import RandomPolicy
from bandit_router.policies.base import BasePolicy
from bandit_router.types import Context
from simulator import EnvSpec, Plan, build_episode, make_scenario, simulate
from simulator.agents import CascadeAgent, LLMRouterAgent, RouterAgent, make_agent
from simulator.environments import build_world, load_dataset
from simulator.environments.dataset import implied_prices
from simulator.metrics import oracle_choice

SAMPLE = Path(__file__).parent / "data" / "routellm_sample.csv.gz"
MODELS = ("big", "mid", "small")


def write_table(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    columns = ["prompt_id", "prompt", "task", "split"] + [f"{k}_{m}" for m in MODELS for k in ("quality", "cost")]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


@pytest.fixture
def holey_table(tmp_path: Path) -> Path:
    """60 prompts, 3 models; `mid` has no quality on every 3rd prompt, `big` no cost on every 5th; one prompt
    has no model at all."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        task = ("code", "chat")[i % 2]
        row: dict[str, Any] = {
            "prompt_id": f"p{i}",
            "prompt": f"{'def f(x): return x' if task == 'code' else 'hi'} question {i} " + "word " * (i % 7),
            "task": task,
            "split": "train" if i < 20 else "test",
        }
        for m, c in zip(MODELS, (0.01, 0.002, 0.0005), strict=True):
            row[f"quality_{m}"] = float(rng.random() < {"big": 0.9, "mid": 0.7, "small": 0.5}[m])
            row[f"cost_{m}"] = c * (1 + 0.01 * i)
        if i % 3 == 0:
            row["quality_mid"] = ""
        if i % 5 == 0:
            row["cost_big"] = "nan"
        if i == 59:
            row["quality_big"] = row["quality_mid"] = row["quality_small"] = ""
        rows.append(row)
    return write_table(tmp_path / "holes.csv", rows)


class SpyPolicy(BasePolicy):
    """Random choices; records everything the router hands it for learning."""

    explores = False

    def __init__(self) -> None:
        self.name = "spy"
        self.inner = RandomPolicy()
        self.updates: list[tuple[str, float, float]] = []
        self.offered: list[tuple[str, ...]] = []

    def pmf(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        self.offered.append(tuple(m.name for m in models))
        return self.inner.pmf(context, models, penalty, rng)

    def update(self, context: Context, model: ModelSpec, quality: float, probability: float) -> None:
        self.updates.append((model.name, quality, probability))


def spy_run(env_spec: str, scenarios: Sequence[str] = (), seed: int = 0, steps: int | None = None, **options: Any):
    env = EnvSpec.parse(env_spec, **options).build()
    episode = build_episode(env, [make_scenario(s, env) for s in scenarios], seed, steps=steps)
    spy = SpyPolicy()
    trace = RouterAgent("spy", lambda _seed: spy).run(episode, env, 10.0, seed)
    return env, episode, trace, spy


# -- dataset environment ---------------------------------------------------------------------------------
def test_holes_are_unavailable_models_counted_and_never_chosen(holey_table: Path) -> None:
    env = load_dataset(holey_table)
    assert env.info["dropped_prompts"] == 1  # the prompt without any model
    assert len(env.eval_rows) == 59
    # mid: prompts 0, 3, …, 57 (20); big: 0, 5, …, 55 (12); both counted once per cell
    assert env.missing_cells == 20 + 12
    assert env.describe()["missing_by_model"] == {"big": 12, "mid": 20}
    _, episode, trace, spy = spy_run(f"dataset:{holey_table}")
    for t, k in enumerate(trace.chosen.tolist()):
        assert episode.available[t, k], "the router chose a model that has no outcome for this prompt"
        assert set(spy.offered[t]) == {MODELS[j] for j in np.flatnonzero(episode.available[t])}


def test_the_policy_sees_only_the_chosen_models_outcome(holey_table: Path) -> None:
    _, episode, trace, spy = spy_run(f"dataset:{holey_table}")
    assert len(spy.updates) == episode.n_steps  # exactly one outcome per decision
    for t, (model, quality, probability) in enumerate(spy.updates):
        k = int(trace.chosen[t])
        assert model == MODELS[k]
        assert quality == episode.quality[t, k]
        assert 0 < probability <= 1
    assert trace.quality.tolist() == [episode.quality[t, k] for t, k in enumerate(trace.chosen.tolist())]


def test_split_separates_training_from_evaluated_prompts(holey_table: Path) -> None:
    env = load_dataset(holey_table, split="split")
    assert len(env.train_rows) == 20 and len(env.eval_rows) == 39
    assert set(env.eval_rows.tolist()).isdisjoint(env.train_rows.tolist())
    episode = env.episode(0)
    assert sorted(episode.rows.tolist()) == sorted(env.eval_rows.tolist())  # one pass, shuffled
    assert not np.array_equal(episode.rows, env.eval_rows)


def test_classifier_is_fitted_on_the_training_part_only(holey_table: Path, tmp_path: Path) -> None:
    """Changing the evaluated rows' outcomes must not change the classifier's decisions."""
    env = load_dataset(holey_table, split="split")
    rows = list(csv.DictReader(holey_table.open()))
    for row in rows:
        if row["split"] == "test":
            row["quality_small"], row["quality_big"] = row["quality_big"], row["quality_small"]
    flipped = load_dataset(write_table(tmp_path / "flipped.csv", rows), split="split")
    choices = []
    for e in (env, flipped):
        agent = make_agent("classifier", e)
        choices.append(agent.run(e.episode(3), e, 10.0, 3).chosen.tolist())
    assert choices[0] == choices[1]


def test_prices_are_implied_from_the_table() -> None:
    tokens = np.array([10.0, 20.0, 30.0, 40.0])
    a, b = implied_prices(2e-6 * tokens + 1e-4, tokens)
    assert a == pytest.approx(2e-6) and b == pytest.approx(1e-4)
    env = load_dataset(SAMPLE)
    for k, spec in enumerate(env.models):
        predicted = np.array([spec.cost_usd(c.input_tokens, 1.0) for c in env.contexts(env.eval_rows, _extractor())])
        real = env.cost_usd[env.eval_rows, k]
        assert abs(predicted.mean() / real.mean() - 1) < 0.05  # ĉ is right on average
    assert {m.tier for m in env.models} == {"large", "small"}


def test_a_dataset_whose_model_costs_more_than_a_dollar_a_request_is_simulated(tmp_path: Path) -> None:
    """Agent runs cost several dollars a request: the dataset's implied price, b·10⁶ USD per 1M tokens of one
    token, is beyond what a catalog entry may say (1e6), and still a model of the run (the catalog's bounds are for
    prices someone types, `catalog.check_entry`)."""
    rows = [{"prompt_id": f"p{i}", "prompt": f"task {i}", "task": "agent", "split": "test",
             **{f"quality_{m}": float(i % 2) for m in MODELS},
             **{f"cost_{m}": c for m, c in zip(MODELS, (2.5, 0.4, 0.01), strict=True)}} for i in range(20)]
    env = load_dataset(write_table(tmp_path / "agent.csv", rows), prices="flat")
    assert [round(spec.cost_usd(100, 1.0), 6) for spec in env.models] == [2.5, 0.4, 0.01]
    plan = Plan(env=EnvSpec.parse(f"dataset:{tmp_path / 'agent.csv'}", prices="flat"), policies=("default",),
                cost_weights=(1.0,), seeds=(0,))
    result = simulate(plan, workers=1)
    assert len(result.runs) == 1 and result.n_steps == 20


def _extractor():
    from bandit_router.features import FeatureExtractor

    return FeatureExtractor()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"split": "nope"}, "no split column"),
        ({"tasks": ("nope",)}, "no task"),
        ({"drop_flag": "nope"}, "no column"),
    ],
)
def test_bad_dataset_options_are_named(options: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        load_dataset(SAMPLE, **options)


def test_a_table_scored_outside_0_1_is_named_not_an_empty_table(tmp_path: Path) -> None:
    """A table of 1–10 judge scores has no quality in [0, 1]: every cell counted as missing, every prompt was
    dropped, and the message was "no prompts to evaluate", as for a table without rows."""
    scores = {f"{k}_{m}": v for m in MODELS for k, v in (("quality", 7), ("cost", 0.01))}
    rows = [{"prompt": f"q{i}", **scores} for i in range(3)]
    with pytest.raises(InvalidInput, match=r"quality_big = 7 on data row 1 .* is outside \[0, 1\] \(and 8 more"):
        load_dataset(write_table(tmp_path / "scores.csv", rows))


@pytest.mark.parametrize(("column", "value", "match"), [
    ("quality_mid", "1.02", r"quality_mid = 1.02 on data row 3 \(prompt_id 'p2'\) is outside \[0, 1\]; .*rescale"),
    ("quality_small", "-0.5", r"quality_small = -0.5 on data row 3 \(prompt_id 'p2'\) is outside \[0, 1\]"),
    ("cost_big", "-0.01", r"cost_big = -0.01 on data row 3 \(prompt_id 'p2'\) is negative"),
])
def test_a_quality_outside_0_1_or_a_negative_cost_is_refused_naming_the_cell(
    tmp_path: Path, column: str, value: str, match: str
) -> None:
    """Such a cell counted as missing: the model was unavailable for that prompt, and the run went on without a
    word, its means over the other cells (a rounding to 1.02 in one row of a table dropped that row's outcome)."""
    cells = {f"{k}_{m}": v for m in MODELS for k, v in (("quality", 0.5), ("cost", 0.01))}
    rows = [{"prompt_id": f"p{i}", "prompt": f"q{i}", **cells} for i in range(4)]
    rows[2] = {**rows[2], column: value}
    with pytest.raises(InvalidInput, match=match):
        load_dataset(write_table(tmp_path / "table.csv", rows))


def test_a_dataset_that_is_a_folder_or_a_cut_gzip_file_is_named(tmp_path: Path) -> None:
    """A folder was an IsADirectoryError traceback; a gzip file cut short (a broken download) was EOFError, which
    the command line shows as a bare "Aborted!"."""
    with pytest.raises(InvalidInput, match="cannot read"):
        load_dataset(tmp_path)
    cut = tmp_path / "cut.csv.gz"
    data = SAMPLE.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInput, match=r"cut\.csv\.gz: not a whole gzip file"):
        load_dataset(cut)


def test_a_table_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts the file with a byte-order mark, which was part of the first column's name: a
    table whose first column is `prompt` was refused with "needs a prompt column"."""
    table = tmp_path / "excel.csv"
    header = "prompt,task," + ",".join(f"quality_{m},cost_{m}" for m in MODELS)
    rows = "".join(f"q{i},t,1,0.01,0,0.005,1,0.001\n" for i in range(3))
    table.write_text(header + "\n" + rows, encoding="utf-8-sig")
    env = load_dataset(table)
    assert env.prompts == ("q0", "q1", "q2") and env.model_names == MODELS


@pytest.mark.parametrize(("header", "match"), [
    # the second quality_big's values were read, and the message was "model names must be unique"
    ("prompt,quality_big,cost_big,quality_big", r"the header has the column\(s\) \['quality_big'\] more than once"),
    # a file separated by `;` is one column: "needs quality_<model> and cost_<model> columns (missing for [])"
    ("prompt;quality_big;cost_big", r"comma-separated; its header read as 1 column\(s\): 'prompt;quality_big;"),
])
def test_a_header_that_cannot_be_read_as_a_table_is_named(tmp_path: Path, header: str, match: str) -> None:
    table = tmp_path / "table.csv"
    table.write_text(header + "\n" + ",".join(["q", "1", "0.01", "0"][: header.count(",") + 1]) + "\n")
    with pytest.raises(InvalidInput, match=match):
        load_dataset(table)


def test_a_split_whose_training_and_evaluated_parts_are_one_value_is_refused(holey_table: Path) -> None:
    """`--split task --train-value code --eval-value code` trained the classifier (and a warm-up) on the very
    prompts it was scored on."""
    with pytest.raises(InvalidInput, match="the training part and the evaluated part are both task = 'code'"):
        load_dataset(holey_table, split="task", train_value="code", eval_value="code")


@pytest.mark.parametrize(("split", "values", "match"), [
    ("random:0.5", {"train_value": "train", "eval_value": "dev"},
     r"--train-value 'train' and --eval-value 'dev' name values of a split column .* but --split random:0\.5 draws"),
    (None, {"eval_value": "test"}, r"--eval-value 'test' names a value of a split column .* but without --split"),
])
def test_split_values_without_a_split_column_are_refused(
    holey_table: Path, split: str | None, values: dict[str, str], match: str
) -> None:
    """`--split random:0.5 --train-value train --eval-value dev` (or the values without --split) ran as if the
    values had not been given: a random split draws its parts and reads no column."""
    with pytest.raises(InvalidInput, match=match):
        load_dataset(holey_table, split=split, **values)
    assert len(load_dataset(holey_table, split="random:0.5").train_rows) > 0  # without them, as before
    assert len(load_dataset(holey_table, split="split").train_rows) > 0  # a column's defaults: train and test


@pytest.mark.parametrize("compressed", [False, True])
def test_a_table_that_is_not_utf8_is_refused_naming_the_line(tmp_path: Path, compressed: bool) -> None:
    """A table saved as Latin-1 (Excel's plain "CSV" on Windows) was read with replacement characters: its prompts
    changed (`région` became `r�gion`) without a word. It is refused, naming the file, the line and the fix; UTF-8,
    with a byte-order mark or without, is read as it was."""
    import gzip

    header = "prompt,task," + ",".join(f"quality_{m},cost_{m}" for m in MODELS)
    text = header + "\n" + "".join(f"la région {i},t,1,0.01,0,0.005,1,0.001\n" for i in range(3))
    table = tmp_path / ("latin.csv.gz" if compressed else "latin.csv")
    table.write_bytes(gzip.compress(text.encode("latin-1")) if compressed else text.encode("latin-1"))
    match = (rf"{table.name}: line 2 is not UTF-8 \(its byte 5 is 0xe9: a file saved as Latin-1 or Windows-1252\?\): "
             r"save it as UTF-8 \(Excel: \"CSV UTF-8\"\), or convert it, e\.g\. iconv -f windows-1252 -t utf-8")
    with pytest.raises(InvalidInput, match=match):
        load_dataset(table)
    for encoding in ("utf-8", "utf-8-sig"):
        table.write_bytes(gzip.compress(text.encode(encoding)) if compressed else text.encode(encoding))
        assert load_dataset(table).prompts[0] == "la région 0"


@pytest.mark.parametrize(
    "encoding", ["utf-16", "utf-16-be", "utf-32", "cp1252 with CR line ends", "cp1252 with CRLF line ends"])
def test_a_utf16_table_or_one_with_cr_line_ends_is_named_as_it_is(tmp_path: Path, encoding: str) -> None:
    """A UTF-16 table was called "Latin-1 or Windows-1252?" at its byte 1 (0xff); a table whose lines end with a lone
    CR (old Mac) was "line 1" whatever its line; and the suggested `iconv -f latin1` turns Windows-1252's curly
    quotes and € (0x80–0x9F) into invisible control characters, so the suggestion is `-f windows-1252`."""
    header = "prompt,task," + ",".join(f"quality_{m},cost_{m}" for m in MODELS)
    rows = "".join(f"row {i},t,1,0.01,0,0.005,1,0.001\n" for i in range(3))
    rows += "the \u2019quoted\u2019 one,t,1,0,0,0,1,0\n"
    text = header + "\n" + rows
    table = tmp_path / "table.csv"
    if encoding == "utf-16":
        table.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
        match = r"the file is UTF-16 \(it starts with the byte-order mark 0xff 0xfe\).*iconv -f utf-16 -t utf-8"
    elif encoding == "utf-16-be":
        table.write_bytes(codecs.BOM_UTF16_BE + text.encode("utf-16-be"))
        match = r"the file is UTF-16 \(it starts with the byte-order mark 0xfe 0xff\)"
    elif encoding == "utf-32":  # review: its byte-order mark begins with UTF-16's, and it was called UTF-16
        table.write_bytes(codecs.BOM_UTF32_LE + text.encode("utf-32-le"))
        match = r"the file is UTF-32 \(it starts with the byte-order mark 0xff 0xfe 0x00 0x00\).*iconv -f utf-32"
    else:
        table.write_bytes(text.replace("\n", "\r" if "CR line" in encoding else "\r\n").encode("cp1252"))
        match = r"line 5 is not UTF-8 \(its byte 5 is 0x92: .*iconv -f windows-1252 -t utf-8"
    with pytest.raises(InvalidInput, match=match):
        load_dataset(table)
    if encoding.startswith("cp1252"):  # what the suggested conversion gives: the quotes, not control characters
        table.write_bytes(table.read_bytes().decode("windows-1252").encode("utf-8"))
        assert load_dataset(table).prompts[-1] == "the \u2019quoted\u2019 one"


@pytest.mark.parametrize("problem", ["folder", "cut gzip", "no such column", "latin-1"])
def test_a_world_prompt_file_that_cannot_be_read_is_named(tmp_path: Path, problem: str) -> None:
    """A folder was an IsADirectoryError traceback, a cut gzip file click's bare "Aborted!", and a `column` the file
    does not have gave numpy's warnings and then "no prompts to evaluate"; a Latin-1 file was read with replacement
    characters."""
    path, column = tmp_path, "prompt"
    if problem == "cut gzip":
        path = tmp_path / "cut.csv.gz"
        path.write_bytes(SAMPLE.read_bytes()[:2000])
    elif problem == "no such column":
        path, column = SAMPLE, "text"
    elif problem == "latin-1":
        path = tmp_path / "prompts.csv"
        path.write_bytes("prompt\nhello\ncaf\u00e9 au lait\n".encode("latin-1"))
    match = {"folder": "cannot read: Is a directory", "cut gzip": "cannot read: not a whole gzip file",
             "no such column": r"has no column 'text' \(prompts.column\); its columns: 'prompt_id', 'task'",
             "latin-1": r"prompt file .*prompts\.csv: line 3 is not UTF-8 \(its byte 4 is 0xe9"}[problem]
    with pytest.raises(ConfigError, match=match):
        build_world(tiny_world(prompts={"path": str(path), "column": column}))


def test_a_world_file_that_is_a_folder_is_named(tmp_path: Path) -> None:
    """`--env synthetic:FOLDER` was an IsADirectoryError traceback."""
    with pytest.raises(ConfigError, match="cannot read"):
        EnvSpec.parse(f"synthetic:{tmp_path}").build()


def test_drop_flag_and_task_filter() -> None:
    env = load_dataset(SAMPLE, tasks=("gsm8k",), drop_flag="routellm_contaminated")
    assert set(env.domain_names) == {"gsm8k"}
    assert len(env.eval_rows) <= 70


# -- synthetic world -----------------------------------------------------------------------------------
def tiny_world(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "tiny",
        "seed": 1,
        "pool": 400,
        "steps": 400,
        "quality": "expected",
        "domains": [{"name": "code", "weight": 0.5}, {"name": "chat", "weight": 0.5}],
        "models": [
            {"name": "gpt-4o", "skill": {"code": 2.0, "chat": 1.0}, "slope": 0.0},
            {"name": "gpt-4o-mini", "skill": {"code": -1.0, "chat": 1.5}, "slope": 0.0},
        ],
    }
    config.update(overrides)
    return config


def test_synthetic_truth_is_exact() -> None:
    env = build_world(tiny_world())
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    code, chat = env.domain_names.index("code"), env.domain_names.index("chat")
    assert np.allclose(env.quality[env.domains == code], [sigmoid(2.0), sigmoid(-1.0)])
    assert np.allclose(env.quality[env.domains == chat], [sigmoid(1.0), sigmoid(1.5)])
    # prices from the catalog; cost = tokens × price
    spec = env.models[0]
    assert spec.input_usd_per_mtok == 2.5 and spec.output_usd_per_mtok == 10.0
    row = 0
    inp = env.contexts([row], _extractor())[0].input_tokens
    assert env.cost_usd[row, 0] == pytest.approx(spec.cost_usd(inp, env.output_tokens[row, 0]))
    # generated text tells the domain: code prompts carry the code vocabulary
    assert all(
        any(w in env.prompts[i] for w in ("function", "code", "class", "SQL"))
        for i in np.flatnonzero(env.domains == code)[:20]
    )


def test_bernoulli_world_draws_zero_one_outcomes_with_the_right_mean() -> None:
    env = build_world(tiny_world(quality="bernoulli", steps=4000, pool=4000))
    episode = env.episode(5)
    assert set(np.unique(episode.quality)) <= {0.0, 1.0}
    assert episode.quality.mean(axis=0) == pytest.approx(episode.expected.mean(axis=0), abs=0.03)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"quality": "maybe"}, "quality"),
        ({"models": [{"name": "not-a-catalog-model", "skill": {}}]}, "give its prices"),
        ({"colour": "red"}, "unknown keys"),
        # each of these was a KeyError, AttributeError, TypeError or ValueError traceback
        ({"models": [{"skill": {}}]}, r"every entry of \[\[models\]\] needs a name"),
        ({"domains": [{"weight": 1.0}]}, r"every entry of \[\[domains\]\] needs a name"),
        ({"domains": {"name": "code"}}, r"domains must be a list of tables"),
        ({"models": ["gpt-4o"]}, r"models must be a list of tables"),
        ({"models": [{"name": "gpt-4o", "skill": 3}]}, "skill must be a table"),
        ({"models": [{"name": "gpt-4o", "slope": "steep"}]}, "model 'gpt-4o': slope must be a number, got 'steep'"),
        ({"domains": [{"name": "code", "weight": "x"}]}, "domain 'code': weight must be a number, got 'x'"),
        ({"domains": [{"name": "code", "weight": math.inf}]}, "weight must be a number >= 0, got inf"),
        ({"pool": -5}, "pool must be an integer >= 1, got -5"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"scenarios": 5}, "scenarios must be tables of settings"),
        # each of these was built, silently wrong
        ({"pool": 1.5}, "pool must be an integer, got 1.5"),  # a pool of one prompt
        # skill 0 for the misspelt domain
        ({"models": [{"name": "gpt-4o", "skill": {"cdoe": 2.0}}]}, r"skill names no domain 'cdoe' \(did you mean code"),
        ({"models": [{"name": "gpt-4o", "skill": {"code": math.nan}}]}, "code must be a finite number, got nan"),
        ({"models": [{"name": "gpt-4o", "dormant": "false"}]}, "dormant must be true or false, got 'false'"),  # dormant
        ({"models": [{"name": "gpt-4o", "tokens_per_s": 0}]}, "tokens_per_s must be a number > 0, got 0"),  # inf s
        ({"models": [{"name": "gpt-4o"}, {"name": "gpt-4o"}]}, r"\[\[models\]\] names \['gpt-4o'\] more than once"),
        ({"domains": [{"name": "code"}, {"name": "code"}]}, r"\[\[domains\]\] names \['code'\] more than once"),
        ({"prompts": {"path": str(SAMPLE)}, "difficulty_visible": 2}, r"difficulty_visible must be a number in \[0, 1"),
    ],
)
def test_bad_worlds_are_refused_with_a_clear_message(config: dict[str, Any], match: str) -> None:
    from bandit_router.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        build_world(tiny_world(**config))


def test_a_world_with_domains_of_its_own_generates_their_prompts() -> None:
    """A domain outside the built-in phrase banks (code, math, writing, chat) has a generic bank with 2 fillers: a
    prompt drawing 3 or more was numpy's ValueError (a larger sample than the population), so such a world of
    any size could not be built."""
    models = [{"name": "gpt-4o", "skill": {"legal": 1.0}}, {"name": "gpt-4o-mini", "skill": {"default": 0.5}}]
    env = build_world(tiny_world(domains=[{"name": "legal"}, {"name": "medical"}], models=models, pool=2000))
    assert {env.domain_names[d] for d in env.domains} == {"legal", "medical"}
    assert any(p.startswith("I have a legal task:") for p in env.prompts)
    assert max(p.count("Please be precise.") + p.count("Thanks.") for p in env.prompts) == 2  # both fillers


def test_a_dormant_model_that_never_arrives_is_not_the_best_fixed_model(tmp_path: Path) -> None:
    """Its "fixed" stream is the cheapest model's (the fallback), so where the cheapest model was the best in
    hindsight the tie went to the dormant model listed before it: `best_fixed` named a model that never answered."""
    (tmp_path / "world.toml").write_text(
        'pool = 100\n[[domains]]\nname = "chat"\n'
        '[[models]]\nname = "claude-haiku-4-5"\ndormant = true\nskill = { default = 3.0 }\n'
        '[[models]]\nname = "gpt-4o"\nskill = { default = 2.0 }\n'
        '[[models]]\nname = "gpt-4o-mini"\nskill = { default = 2.0 }\n'
    )
    plan = Plan(env=EnvSpec.parse(f"synthetic:{tmp_path / 'world.toml'}"), policies=("random",),
                cost_weights=(1000.0,), seeds=(0, 1), steps=100)
    result = simulate(plan, workers=1)
    assert {r.best_fixed for r in [*result.runs, *result.baselines]} == {"gpt-4o-mini"}  # the cheapest, at λ = 1000


def test_packaged_world_loads() -> None:
    env = EnvSpec.parse("synthetic:default").build()
    assert env.dormant == {"claude-haiku-4-5"}
    episode = env.episode(0, steps=100)
    assert "claude-haiku-4-5" not in episode.initial_models
    assert not episode.available[:, env.model_names.index("claude-haiku-4-5")].any()


# -- scenarios ---------------------------------------------------------------------------------------------
def test_drift_changes_only_the_model_after_the_step_and_keeps_zero_one() -> None:
    env = load_dataset(SAMPLE)
    base = build_episode(env, [], 0)
    drifted = build_episode(env, [make_scenario("drift:model=gpt-4-1106-preview,delta=-1,at=0.5", env)], 0)
    half = base.n_steps // 2
    k = env.model_names.index("gpt-4-1106-preview")
    assert np.array_equal(base.quality[:half], drifted.quality[:half])
    assert np.array_equal(base.quality[:, 1 - k], drifted.quality[:, 1 - k])
    binary = np.isin(base.quality[half:, k], (0.0, 1.0))
    assert (drifted.quality[half:, k][binary] == 0).all()  # every success of a 0/1 benchmark became a failure
    assert drifted.marks[0].kind == "drift" and drifted.marks[0].step == half


def test_two_events_of_one_kind_each_get_their_reaction_time() -> None:
    """Both drifts wrote their reaction time under the key `drift`: the first one's was lost."""
    plan = Plan(env=EnvSpec.parse(f"dataset:{SAMPLE}"), policies=("random",), seeds=(0,), window=20,
                scenarios=("drift:model=gpt-4-1106-preview,at=0.2", "drift:model=mixtral-8x7b-instruct-v0.1,at=0.6"))
    run = simulate(plan, workers=1).runs[0]
    assert set(run.reaction) == {"drift", "drift_final_share", "drift 2", "drift 2_final_share"}


def test_a_reaction_is_measured_until_the_next_event_not_through_it(tmp_path: Path) -> None:
    """A drift's reaction period ran to the end of the run, through the events after it: a policy that never
    followed the drift, and moved only with a later event, was reported to have reacted to the drift."""
    from simulator.environments.base import Mark
    from simulator.runner import reaction_times

    rows = [{"prompt": f"q{i}", "quality_big": 1, "cost_big": 0.01, "quality_mid": 0, "cost_mid": 0.005,
             "quality_small": 0, "cost_small": 0.001} for i in range(100)]
    env = load_dataset(write_table(tmp_path / "table.csv", rows))
    big, small = env.model_names.index("big"), env.model_names.index("small")
    episode = build_episode(env, [], 0).replace(marks=(Mark("drift", 20, "big"), Mark("traffic-shift", 50)))
    chosen = np.where(np.arange(100) < 60, small, big)  # to the best model (big) only after the second event
    reaction = reaction_times(episode, chosen, 1.0, window=10)
    assert reaction["drift"] is None  # never between steps 20 and 50 (it was 38: at step 58, past the shift)
    assert reaction["drift_final_share"] == 0.0  # the last 10% of steps 20–50 (was 1.0: of steps 20–100)
    alone = reaction_times(episode.replace(marks=(Mark("drift", 20, "big"),)), chosen, 1.0, window=10)
    assert alone["drift"] == 38 and alone["drift_final_share"] == 1.0  # no later event: measured to the end
    outage = episode.replace(marks=(Mark("outage", 20, "small", 80), Mark("drift", 40, "big")))
    assert reaction_times(outage, chosen, 1.0, window=10)["outage"] is None  # capped at 40: small until 60


def test_an_announced_price_change_of_a_routers_only_model_is_a_message(tmp_path: Path) -> None:
    """It stopped mid-run with "cannot retire the last model", which named nothing the user had asked for."""
    table = tmp_path / "one.csv"
    table.write_text("prompt_id,prompt,task,quality_a,cost_a\n" + "".join(f"{i},q{i},t,1,0.01\n" for i in range(6)))
    env = load_dataset(table)
    with pytest.raises(InvalidInput, match="announce=false changes the bills only"):
        build_episode(env, [make_scenario("price-change", env)], 0)
    episode = build_episode(env, [make_scenario("price-change:announce=false", env)], 0)
    assert episode.cost_usd[-1, 0] == pytest.approx(0.002)  # the bills change


def test_new_model_is_unknown_then_added() -> None:
    env, _episode, trace, spy = spy_run("synthetic:default", ["new-model:at=100"], steps=300)
    k = env.model_names.index("claude-haiku-4-5")
    assert (trace.chosen[:100] != k).all()
    assert all("claude-haiku-4-5" not in offered for offered in spy.offered[:100])
    assert all("claude-haiku-4-5" in offered for offered in spy.offered[100:])
    assert (trace.chosen[100:] == k).any()


def test_outage_fails_the_model_in_its_window() -> None:
    env = build_world(tiny_world())
    episode = build_episode(env, [make_scenario("outage:model=gpt-4o,at=100,until=200", env)], 0)
    assert (episode.quality[100:200, 0] == 0).all() and (episode.cost_usd[100:200, 0] == 0).all()
    assert (episode.quality[200:, 0] > 0).all()


def test_price_change_changes_the_cost_and_updates_the_routers_catalog() -> None:
    env = build_world(tiny_world())
    base = build_episode(env, [], 0)
    episode = build_episode(env, [make_scenario("price-change:model=gpt-4o,factor=0.5,at=200", env)], 0)
    assert np.allclose(episode.cost_usd[200:, 0], 0.5 * base.cost_usd[200:, 0])
    assert np.array_equal(episode.cost_usd[:200], base.cost_usd[:200])
    agent = RouterAgent("spy", lambda _seed: SpyPolicy())
    router = agent.make_router(episode, 10.0, 0)
    from simulator.agents.router_agent import _apply_event

    _apply_event(router, episode.events[0])
    assert router.spec("gpt-4o").input_usd_per_mtok == pytest.approx(1.25)


def test_traffic_shift_changes_the_domain_mix() -> None:
    env = build_world(tiny_world(steps=2000, pool=1000))
    episode = build_episode(env, [make_scenario("traffic-shift:to=chat,share=0.9,at=0.5", env)], 0)
    chat = env.domain_names.index("chat")
    assert (episode.domains[:1000] == chat).mean() == pytest.approx(0.5, abs=0.05)
    assert (episode.domains[1000:] == chat).mean() == pytest.approx(0.95, abs=0.03)


def test_delayed_feedback_arrives_late_and_some_never() -> None:
    _env, episode, _trace, spy = spy_run("synthetic:default", ["delayed-feedback:mean=50,lost=0.2"], steps=1000)
    assert episode.feedback.delay_mean == 50
    assert 0.6 * 1000 < len(spy.updates) < 0.85 * 1000  # 20% lost, plus the ones still in flight at the end
    assert len(spy.updates) < episode.n_steps


def test_noisy_feedback_reaches_the_policy_but_not_the_metrics() -> None:
    _env, episode, trace, spy = spy_run("synthetic:default", ["noisy-feedback:sd=0.2,flip=0.3"], steps=500)
    seen = np.array([q for _, q, _ in spy.updates])
    truth = np.array([episode.quality[t, k] for t, k in enumerate(trace.chosen.tolist())])
    assert (seen != truth).mean() > 0.5
    assert np.array_equal(trace.quality, truth)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("earthquake", "unknown scenario"),
        ("drift:model=nobody", "unknown model"),
        ("drift:speed=3", "unknown setting"),
        ("traffic-shift:to=nowhere", "unknown domain"),
        ("delayed-feedback:lost=1.5", "lost"),
        # numpy's ValueError ("Probabilities are not non-negative") while the episode was built
        ("traffic-shift:share=1.5", r"traffic-shift: share must be in \[0, 1\], got 1.5"),
        ("traffic-shift:share=-0.2", r"traffic-shift: share must be in \[0, 1\], got -0.2"),
        # ran, the price change never announced
        ("price-change:announce=maybe", "price-change: announce must be true or false, got 'maybe'"),
        # a negative cost refused by the first `Router.learn` of a run (or by the model's spec), not named
        ("outage:cost_factor=-1", "outage: cost_factor must be >= 0, got -1"),
        ("outage:latency_s=-5", "outage: latency_s must be >= 0, got -5"),
        ("price-change:factor=-1,announce=false", "price-change: factor must be >= 0, got -1"),
    ],
)
def test_bad_scenarios_are_refused(text: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        make_scenario(text, build_world(tiny_world()))


# -- strategies ----------------------------------------------------------------------------------------
def test_cascade_escalates_until_the_judge_accepts_and_pays_every_call() -> None:
    env = build_world(tiny_world(quality="expected"))
    episode = env.episode(0, steps=50)
    cheap, dear = env.model_names.index("gpt-4o-mini"), env.model_names.index("gpt-4o")
    agent = CascadeAgent("cascade", [cheap, dear], threshold=0.5, error=0.0)
    trace = agent.run(episode, env, 0.0, 0)
    for t in range(50):
        if episode.quality[t, cheap] >= 0.5:
            assert trace.chosen[t] == cheap and trace.cost_usd[t] == pytest.approx(episode.cost_usd[t, cheap])
        else:
            assert trace.chosen[t] == dear
            assert trace.cost_usd[t] == pytest.approx(episode.cost_usd[t, cheap] + episode.cost_usd[t, dear])
    wrong = CascadeAgent("cascade", [cheap, dear], threshold=0.5, error=1.0).run(episode, env, 0.0, 0)
    assert ((wrong.chosen == cheap) == (episode.quality[:, cheap] < 0.5)).all()  # an always-wrong judge


@pytest.mark.parametrize(("spec", "match"), [
    ("cascade:models=big>big", "models lists big more than once; a chain calls each model at most once"),
    ("learned-cascade:models=small>big>small", "models lists small more than once"),
    ("cascade:models=>", "models names no model"),  # a chain of nothing: every mean NaN, numpy's warnings
    ("cascade:max_cost=abc", r"max_cost='abc' must be a number"),  # a ValueError traceback
    ("cascade:max_cost=nan", "max_cost must be a number .* got nan"),  # a budget no comparison held
])
def test_a_cascade_chain_or_budget_that_makes_no_sense_is_refused(holey_table: Path, spec: str, match: str) -> None:
    """`models=big>big` ran: the rejected model was called (and paid) again and its same answer judged again."""
    with pytest.raises(InvalidInput, match=match):
        make_agent(spec, load_dataset(holey_table))


def test_cross_fitting_with_more_folds_than_prompts_is_refused(holey_table: Path) -> None:
    """`classifier:folds=K` with K above the number of prompts ran, with folds that held no prompt."""
    env = load_dataset(holey_table)  # 59 evaluated prompts, no training part: cross-fitted
    with pytest.raises(InvalidInput, match=r"folds=60 is more than the 59 evaluated prompt\(s\) it cross-fits"):
        make_agent("classifier:folds=60", env)
    make_agent("classifier:folds=59", env)  # one prompt per fold
    make_agent("classifier:folds=60", load_dataset(holey_table, split="split"))  # fitted on the training part


def test_llm_router_with_perfect_accuracy_is_the_oracle_plus_its_own_cost() -> None:
    env = load_dataset(SAMPLE)
    episode = env.episode(0)
    tokens = np.full(len(env.prompts), 100.0)
    trace = LLMRouterAgent("llm-router", tokens, accuracy=1.0, price_in=1.0, price_out=0.0).run(episode, env, 20.0, 0)
    best = oracle_choice(episode.quality, episode.cost_usd, episode.available, 20.0)
    assert np.array_equal(trace.chosen, best)
    assert np.allclose(trace.cost_usd, episode.cost_usd[np.arange(episode.n_steps), best] + 100 / 1e6)
    half = LLMRouterAgent("llm-router", tokens, accuracy=0.5).run(episode, env, 20.0, 0)
    assert 0.35 < (half.chosen == best).mean() < 0.65


def test_fixed_policy_through_the_router_equals_the_fixed_baseline(holey_table: Path) -> None:
    plan = Plan(env=EnvSpec.parse(f"dataset:{holey_table}"), policies=("fixed:mid",), cost_weights=(5.0,), seeds=(0,))
    result = simulate(plan, workers=1)
    run = result.runs[0]
    base = next(r for r in result.baselines if r.policy == "fixed:mid")
    assert run.mean_reward == pytest.approx(base.mean_reward)
    assert run.model_shares == pytest.approx(base.model_shares)


def test_oracle_is_an_upper_bound_and_learning_beats_random() -> None:
    plan = Plan(
        env=EnvSpec.parse("synthetic:default"),
        policies=("vw-squarecb", "random"),
        cost_weights=(20.0,),
        seeds=(0,),
        steps=3000,
    )
    result = simulate(plan, workers=1)
    rewards = {r.policy: r.mean_reward for r in result.runs + result.baselines}
    assert rewards["oracle"] >= max(rewards.values()) - 1e-12
    assert rewards["vw-squarecb"] > rewards["random"] + 0.03
    fixed_best = max(v for k, v in rewards.items() if k.startswith("fixed:"))
    assert rewards["vw-squarecb"] > fixed_best  # context pays off in the default world


def test_results_do_not_depend_on_the_number_of_workers() -> None:
    plan = Plan(
        env=EnvSpec.parse(f"dataset:{SAMPLE}"),
        policies=("vw-squarecb", "lints"),
        cost_weights=(10.0, 40.0),
        seeds=(0, 1),
    )
    one = simulate(plan, workers=1)
    two = simulate(plan, workers=2)
    assert [(r.policy, r.cost_weight, r.seed, r.mean_reward) for r in one.runs] == [
        (r.policy, r.cost_weight, r.seed, r.mean_reward) for r in two.runs
    ]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("default:dim=64.5", "setting dim must be an integer, got '64.5'"),
        ("classifier:dim=64.5", "classifier:dim=64.5: dim must be an integer, got '64.5'"),
        ("classifier:folds=2.5", "folds must be an integer, got '2.5'"),
    ],
)
def test_a_non_integer_for_an_integer_setting_is_refused_not_truncated(spec: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        make_agent(spec, load_dataset(SAMPLE))


@pytest.mark.parametrize(("spec", "match"), [
    ("classifier:dim=0", r"classifier:dim=0: dim must be in \[32, 8192\]"),
    ("classifier:ridge=-1", "classifier:ridge=-1: ridge must be > 0"),
])
def test_a_classifier_setting_out_of_range_is_a_message(spec: str, match: str) -> None:
    """Both were a ValueError traceback from the classifier's parameters on the command line."""
    with pytest.raises(InvalidInput, match=match):
        make_agent(spec, load_dataset(SAMPLE))


@pytest.mark.parametrize("policies", [("oracle", "random"), ("random", "oracle:")])
def test_the_oracle_is_refused_as_a_policy_since_it_is_always_reported(policies: tuple[str, ...]) -> None:
    """`--policies oracle,random` ran the oracle twice and pooled both: its two-model APGR averaged RouteLLM's optimal
    curve with its own λ sweep (1.525 instead of 1.7 on a 5-prompt table), AIQ counted each seed twice, and
    summary.md showed every oracle row twice."""
    with pytest.raises(InvalidInput, match="the oracle is always reported"):
        Plan(env=EnvSpec.parse(f"dataset:{SAMPLE}"), policies=policies)


@pytest.mark.parametrize(("settings", "message"), [
    ({"cost_weights": (10.0, 10.0, 20.0)}, "each cost weight may appear once, got 10 more than once"),
    ({"seeds": (0, 1, 0)}, "each seed may appear once, got 0 more than once"),
])
def test_a_plan_refuses_a_cost_weight_or_seed_given_twice(settings: dict[str, Any], message: str) -> None:
    """`--cost-weights 10,10` ran every seed twice at λ = 10 and pooled the runs as if they were more seeds:
    n_seeds 4 for 2 seeds, 95% intervals too narrow, and every λ = 10 record and section twice."""
    with pytest.raises(InvalidInput, match=message):
        Plan(env=EnvSpec.parse(f"dataset:{SAMPLE}"), policies=("random",), **settings)


def test_plan_refuses_unknown_policies() -> None:
    with pytest.raises(InvalidInput, match="unknown policy"):
        Plan(env=EnvSpec.parse(f"dataset:{SAMPLE}"), policies=("telepathy",))
    # each below was refused only by the first run, seconds later, or with a misleading message
    plan_cases: list[tuple[dict[str, Any], str]] = [
        ({"policies": "linucb"}, r"policies must be a tuple of policy specs, got str 'linucb' \(one: \('linucb',\)\)"),
        ({"cost_weights": 20.0}, "cost_weights must be a tuple of numbers, got float"),  # TypeError
        ({"seeds": 3}, "seeds must be a tuple of integers, got int 3"),  # "needs at least one … seed"
        ({"cost_weights": (math.nan,)}, r"cost_weights must be finite numbers in \[0, 1e9\], got nan"),
        ({"cost_weights": (-5.0,)}, r"cost_weights must be finite numbers in \[0, 1e9\], got -5.0"),
        ({"seeds": (1.5,)}, "seeds must be integers, got float 1.5"),
        ({"scenarios": ("earthquake",)}, "unknown scenario 'earthquake'"),
        ({"scenarios": "drift"}, "scenarios must be a tuple of scenario specs, got str 'drift'"),
        ({"env": f"dataset:{SAMPLE}"}, r"env must be an EnvSpec \(EnvSpec.parse"),  # AttributeError in simulate
        ({"steps": 0}, r"steps must be an integer >= 1 \(or None: the whole stream\), got 0"),
        # "'BudgetConfig' object is not callable" from the first run
        ({"pacer_factory": BudgetConfig()}, r"pacer_factory must be a callable f\(models, cost_weight\) -> pacer "
         r"\(simulator.budgets.TargetPacers\(texts\) for budget targets\), got BudgetConfig"),
    ]
    for changes, message in plan_cases:
        with pytest.raises(InvalidInput, match=message):
            Plan(**{"env": EnvSpec.parse(f"dataset:{SAMPLE}"), "policies": ("random",), **changes})
    assert Plan(env=EnvSpec.parse(f"dataset:{SAMPLE}"), policies=["random"], seeds=[0, 1]).seeds == (0, 1)
    plan = Plan(env=EnvSpec.parse(f"dataset:{SAMPLE}"), policies=("random",), steps=5)
    for call, message in [  # AttributeErrors, and `workers=1.5` ran
        (lambda: simulate({"env": "x"}), r"simulate takes a Plan \(Plan\(env=EnvSpec.parse"),  # type: ignore[arg-type]
        (lambda: simulate(plan, workers=1.5), r"workers must be >= 1 \(or left out: one per core\), got 1.5"),  # type: ignore[arg-type]
        (lambda: EnvSpec.parse(None), "--env must be dataset:PATH or synthetic:CONFIG, got NoneType None"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(InvalidInput, match=message):
            call()
    env = load_dataset(SAMPLE)
    with pytest.raises(InvalidInput, match="unknown model"):
        make_agent("fixed:gpt-5", env)
    with pytest.raises(InvalidInput, match="unknown model"):
        make_agent("fixed:model=gpt-5", env)
    assert make_agent(f"fixed:model={env.model_names[0]}", env) is not None  # was refused: "model=…" is no model


def test_a_plan_takes_ranges_arrays_and_numpy_numbers_as_it_did_before_its_checks() -> None:
    """The Plan's type checks (this release) refused what it ran before: `seeds=range(3)` and
    `cost_weights=np.linspace(...)` ("must be a tuple of numbers, got ndarray"), `np.float32(20.0)` and
    `np.int64(20)` as cost weights ("must be finite numbers in [0, 1e9], got np.float32(20.0)"). Any iterable but a
    string is the tuple, numpy's numbers Python's; a string and a bad item are still refused (above)."""
    plan = Plan(env=EnvSpec.parse(f"dataset:{SAMPLE}"), policies=("random",), seeds=range(3),
                cost_weights=np.linspace(0.0, 40.0, 3))
    assert plan.seeds == (0, 1, 2) and plan.cost_weights == (0.0, 20.0, 40.0)
    assert all(type(x) is int for x in plan.seeds) and all(type(x) is float for x in plan.cost_weights)
    numpy_numbers = Plan(env=EnvSpec.parse(f"dataset:{SAMPLE}"), policies=("random",), seeds=np.arange(2),
                         cost_weights=(np.float32(20.0), np.int64(5), 7))
    assert numpy_numbers.cost_weights == (20.0, 5.0, 7) and numpy_numbers.seeds == (0, 1)


def test_a_fixed_or_rules_policy_may_name_a_model_that_joins_the_run_later(tmp_path: Path) -> None:
    """The packaged world's dormant model joins the run at step 100 (`new-model`); a fixed policy or a rule naming
    it was refused when the run's router was built on the initial models: a policy is checked against every model
    of the episode, and its model is chosen once it is there. A rule naming a model outside the environment is
    refused before any run, naming the rule (it would never route, without a word)."""
    env = EnvSpec.parse("synthetic:default").build()
    episode = build_episode(env, [make_scenario("new-model:at=100", env)], 0, steps=300)
    k = env.model_names.index("claude-haiku-4-5")
    rules = tmp_path / "rules.toml"
    rules.write_text('default = "gpt-4o-mini"\n[[rules]]\nmodel = "claude-haiku-4-5"\n', encoding="utf-8")
    for spec in ("fixed:claude-haiku-4-5", f"rules:file={rules}"):
        trace = make_agent(spec, env).run(episode, env, 10.0, 0)
        assert (trace.chosen[:100] != k).all() and (trace.chosen[100:] == k).all(), spec
    rules.write_text('[[rules]]\nmodel = "gpt-4o"\nmin_chars = 10\n[[rules]]\nmodel = "claude-haiku-4-6"\n'
                     'markers = ["code"]\n', encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"^unknown model: policy 'rules:file=\S+': rule 2 \(markers = \['code'\]\) "
                       r"names the model 'claude-haiku-4-6' \(did you mean claude-haiku-4-5\?\), which is not one of "
                       r"the environment's models: gpt-4o"):
        make_agent(f"rules:file={rules}", env)


@pytest.mark.parametrize(("env", "warmup"), [(f"dataset:{SAMPLE}", "full"), ("synthetic:default", "bandit")])
def test_a_warmup_without_a_training_part_is_refused(env: str, warmup: str) -> None:
    """It warmed up on nothing and said it had; `full` also ran without the cold-start floor."""
    with pytest.raises(InvalidInput, match=f"warmup '{warmup}' needs a training part"):
        simulate(Plan(env=EnvSpec.parse(env), policies=("random",), steps=20, warmup=warmup), workers=1)


def test_steps_and_passes_together_are_refused() -> None:
    """`--steps 100 --passes 3` ran 100 steps: the passes were left out without a word."""
    with pytest.raises(InvalidInput, match=r"give the run's length as steps \(100\) or as passes \(3\), not both"):
        Plan(env=EnvSpec.parse(f"dataset:{SAMPLE}"), policies=("random",), steps=100, passes=3)
    Plan(env=EnvSpec.parse(f"dataset:{SAMPLE}"), policies=("random",), steps=100, passes=1)  # the default


def test_an_unknown_warmup_is_named_with_the_known_ones() -> None:
    """Without a split it was refused as "warmup 'bogus' needs a training part", as if bogus were a warm-up."""
    with pytest.raises(InvalidInput, match="warmup must be one of none, bandit, full, not 'bogus'"):
        Plan(env=EnvSpec.parse(f"dataset:{SAMPLE}"), policies=("random",), warmup="bogus")


@pytest.mark.parametrize("warmup", ["none", "bandit", "full"])
def test_warmup_uses_only_the_training_part(holey_table: Path, warmup: str) -> None:
    env = load_dataset(holey_table, split="split")
    episode = env.episode(0)
    spy = SpyPolicy()
    RouterAgent("spy", lambda _seed: spy, warmup=warmup).run(episode, env, 10.0, 0)
    before = len(spy.updates) - episode.n_steps
    train_cells = int(np.isfinite(env.labels(env.train_rows, 0)).sum())
    assert before == {"none": 0, "bandit": len(env.train_rows), "full": train_cells}[warmup]
    if warmup == "full":  # every known training outcome, with probability 1, and nothing of the evaluated part
        assert all(p == 1.0 for _, _, p in spy.updates[:before])
    with pytest.raises(InvalidInput, match="warmup"):
        RouterAgent("spy", lambda _seed: spy, warmup="sometimes")


def test_a_bandit_warmup_offers_only_the_models_the_router_has_at_the_start(holey_table: Path) -> None:
    """With a `new-model` scenario on a model of the table (not a dormant one), the warm-up offered that model to a
    router that did not have it yet: "unknown or retired models: ['small']"."""
    env = load_dataset(holey_table, split="split")
    episode = build_episode(env, [make_scenario("new-model:model=small,at=0.5", env)], 0)
    spy = SpyPolicy()
    RouterAgent("spy", lambda _seed: spy, warmup="bandit").run(episode, env, 10.0, 0)
    others = [k for k, m in enumerate(env.model_names) if m != "small"]
    n_warm = int(env.available[env.train_rows][:, others].any(axis=1).sum())  # rows with only `small` are skipped
    assert 0 < n_warm < len(env.train_rows)
    warm = spy.offered[:n_warm]
    assert not any("small" in offered for offered in warm)
    assert any("small" in offered for offered in spy.offered[n_warm:])  # it still arrives


@pytest.mark.parametrize("policy", ["linucb", "vw-squarecb", "thompson"])
def test_full_warmup_is_the_same_whether_reloaded_or_recomputed(holey_table: Path, policy: str) -> None:
    """The pre-trained state is cached per seed; a later run must start from it unchanged by earlier runs."""
    env = load_dataset(holey_table, split="split")
    episode = env.episode(1)
    cached = make_agent(policy, env, warmup="full")
    first = cached.run(episode, env, 10.0, 1)
    again = cached.run(episode, env, 10.0, 1)  # reloads the cached warm state
    fresh = make_agent(policy, env, warmup="full").run(episode, env, 10.0, 1)
    assert again.chosen.tolist() == first.chosen.tolist() == fresh.chosen.tolist()
