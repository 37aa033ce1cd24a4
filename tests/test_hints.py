"""`did you mean …?` wherever a name is refused: a policy, a policy's setting, a model (`fixed:<m>`, a request's
`models`, a retirement), a scenario, an estimator, a configuration value. Each said it did not know the name and
listed the known ones, but did not point at the close one (`hints.quoted`, one helper for all)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bandit_router import Request, Router
from bandit_router.cli import app as cli_app
from bandit_router.config import Settings
from bandit_router.errors import BanditRouterError
from bandit_router.evaluation import evaluate_log, parse_candidate
from bandit_router.evaluation.estimators import make_estimator
from bandit_router.hints import CUTOFF, HINTED, bounds_of, did_you_mean, quoted, quoted_few
from bandit_router.policies import make_policy
from tests.service_client import start_client


def _raised(call: Callable[[], Any]) -> str:
    with pytest.raises(BanditRouterError) as caught:
        call()
    return str(caught.value)


@pytest.mark.parametrize(
    ("call", "hint"),
    [
        (lambda: Router(policy="defualt"), "unknown policy 'defualt' (did you mean default?); known: default"),
        (lambda: Router(policy="linucb:alpah=1"), "has no setting 'alpah' (did you mean alpha?); it has"),
        (lambda: make_policy("thompson", n_draw=3), "has no setting 'n_draw' (did you mean n_draws?)"),
        (lambda: Router(policy="fixed:gpt-4o-mni"), "names the model 'gpt-4o-mni' (did you mean gpt-4o-mini?), which"),
        (lambda: Router().route(Request(prompt="x", models=("gpt-4o", "gpt-4o-mni"))),
         "unknown or retired models: 'gpt-4o-mni' (did you mean gpt-4o-mini?)"),
        (lambda: Router().retire_model("gpt4o"), "unknown model 'gpt4o' (did you mean gpt-4o?)"),
        (lambda: make_estimator("snip"), "unknown estimator 'snip' (did you mean snips?)"),
        (lambda: evaluate_log([], [], models=(), mode="fronzen"), "unknown mode 'fronzen' (did you mean frozen?)"),
        (lambda: parse_candidate("linucb@lamda=5"), "unknown setting 'lamda' (did you mean lambda?)"),
        (lambda: Settings(log_level="debg"), "unknown 'debg' (did you mean debug?)"),
        # a word of longer names: the whole names are too long to be close (SquareCB's γ is two settings)
        (lambda: Router(policy="vw-squarecb:gama=1"),
         "has no setting 'gama' (did you mean gamma_exponent or gamma_scale?); it has"),
        (lambda: Router(policy="default:noise=1"),
         "has no setting 'noise' (did you mean noise_prior or noise_strength?)"),
        (lambda: Router(policy="squarecb"), "unknown policy 'squarecb' (did you mean vw-squarecb?)"),
    ],
)
def test_a_misspelt_name_is_refused_with_the_close_one(call: Callable[[], Any], hint: str) -> None:
    assert hint in _raised(call)


def test_a_route_false_model_is_never_the_hint() -> None:
    """A judge or router model (`route = false`) cannot be routed to: a request naming it, or a policy, is refused
    ("no routable model", "route = false"), so the hint must not send a caller there; a routable one still is."""
    import dataclasses

    from bandit_router.catalog import default_catalog
    from bandit_router.policies.base import check_named_model
    from simulator.environments import make_environment

    specs = list(default_catalog())
    judge = dataclasses.replace(specs[0], name="judge-model", route=False)
    router = Router([*specs[1:], judge], seed=0)
    assert "did you mean" not in _raised(lambda: router.route(Request(prompt="x", models=("judge-modl",))))
    assert "did you mean" not in _raised(lambda: check_named_model("fixed", "judge-modl", router.models))
    assert "did you mean" not in _raised(lambda: Router([*specs[1:], judge], policy="fixed:judge-modl"))
    assert "(did you mean gpt-4o?)" in _raised(lambda: router.route(Request(prompt="x", models=("gpt-4p",))))
    episode = make_environment("synthetic:default").episode(0, steps=10)
    name = episode.model_names[0]
    assert f"(did you mean {name}?)" in _raised(lambda: episode.index(name + "x"))


def test_a_name_close_to_none_gets_no_hint_and_only_the_first_names_are_compared() -> None:
    assert "did you mean" not in _raised(lambda: Router(policy="gama"))
    names = [f"gpt-4o-mini{i}" for i in range(HINTED + 2)]
    assert quoted(names, ["gpt-4o-mini1"]).count("did you mean") == HINTED
    assert quoted([3], ["3"]) == "3"  # not a string (a TOML value of the wrong type): no hint, no TypeError


def test_a_misspelt_configuration_key_close_to_a_word_of_a_key_is_hinted(tmp_path: Path) -> None:
    from bandit_router.config import load_settings
    from bandit_router.errors import ConfigError

    path = tmp_path / "k.toml"
    path.write_text("prompts = true\n")
    with pytest.raises(ConfigError, match=r"unknown keys 'prompts' \(did you mean store_prompts\?\)"):
        load_settings(path, env={})
    assert "did you mean" not in _raised(lambda: Router(policy="fixed:gpt-5x"))  # not one word: no word hint


def test_simulate_suggests_the_policy_model_and_scenario(tmp_path: Path) -> None:
    """`bandit-router simulate --policies …` with a typo (the brief's newcomer: `--policies defualt`)."""
    base = ["simulate", "--env", "synthetic:default", "--out", str(tmp_path / "out")]
    for args, hint in [
        (["--policies", "defualt"], "unknown policy 'defualt' (did you mean default?)"),
        (["--policies", "random,epsgreedy"], "unknown policy 'epsgreedy' (did you mean egreedy?)"),
        (["--policies", "fixed:gpt-4o-mni"], "'gpt-4o-mni' (did you mean gpt-4o-mini?)"),
        (["--policies", "random", "--scenario", "drfit"], "unknown scenario 'drfit' (did you mean drift?)"),
    ]:
        result = CliRunner().invoke(cli_app, [*base, *args])
        assert result.exit_code != 0 and hint in result.output, result.output


def test_serve_suggests_a_policy_and_its_setting_in_the_configuration(tmp_path: Path) -> None:
    for text, hint in [
        ('policy = "defualt"\n', "unknown policy 'defualt' (did you mean default?)"),
        ('policy = "linucb"\npolicy_settings = { alpah = 1.0 }\n', "'alpah' (did you mean alpha?)"),
    ]:
        config = tmp_path / "bandit-router.toml"
        config.write_text(text, encoding="utf-8")
        result = CliRunner().invoke(cli_app, ["serve", "--config", str(config), "--db", str(tmp_path / "r.db")])
        assert result.exit_code == 2 and hint in result.output, result.output


def test_the_service_suggests_the_model_of_a_route_and_a_retirement(tmp_path: Path) -> None:
    client = start_client(Settings(db=tmp_path / "r.db", seed=0))
    try:
        reply = client.post("/v1/route", json={"prompt": "hi", "models": ["gpt-4o", "claude-haiku-4.5"]})
        assert reply.status_code == 422
        assert "'claude-haiku-4.5' (did you mean claude-haiku-4-5?)" in reply.json()["message"], reply.text
        reply = client.delete("/v1/models/gpt4o-mini")
        assert reply.status_code == 404
        assert "'gpt4o-mini' (did you mean gpt-4o-mini?)" in reply.json()["message"], reply.text
    finally:
        client.__exit__(None, None, None)


def test_a_word_hint_counts_each_name_once_and_an_empty_word_is_no_word() -> None:
    """`x` is a word of `x_x_x_x` four times: it was counted as four names (more than `MAX_BY_WORD`, no hint); the
    empty first word of `_private` was the hint for an empty name."""

    assert did_you_mean("x", ("x_x_x_x", "other")) == " (did you mean x_x_x_x?)"
    assert did_you_mean("gama", ("gamma_gamma_scale", "gamma_exponent")) == (
        " (did you mean gamma_exponent or gamma_gamma_scale?)")
    assert did_you_mean("", ("_private", "b_c")) == ""


def test_past_words_up_to_known_names_only_whole_names_are_hinted() -> None:
    """A long model list gets no word hint (difflib over every word of every name, for each refused name), and the
    word index of one refusal is built once for all its names: `quoted` gives each name the hint it has alone."""
    from bandit_router.hints import WORDS_UP_TO, did_you_mean

    few = ["gamma_scale", "gamma_exponent", "gpt-4o-mini"]
    many = few + [f"model-{i}" for i in range(WORDS_UP_TO)]
    assert did_you_mean("gama", few) == " (did you mean gamma_exponent or gamma_scale?)"
    assert did_you_mean("gama", many) == ""
    assert did_you_mean("gpt-4o-mni", many) == " (did you mean gpt-4o-mini?)"
    names = ["gama", "zzz", "gpt-4o-mni", "scal", "expnent"]
    assert quoted(names, few) == ", ".join(f"{n!r}{did_you_mean(n, few)}" for n in names)
    assert quoted(names, few).count("did you mean") == 4


def test_the_hints_are_difflibs_over_every_name_and_word() -> None:
    """Comparing only the names whose length can reach the cutoff gives what difflib over all of them gives: against
    a plain reference on 2,000 seeded random names and known lists."""
    import difflib
    import random
    import re

    from bandit_router.hints import CUTOFF, MAX_BY_WORD, close_names

    def reference(name: str, known: list[str]) -> list[str]:
        close = difflib.get_close_matches(name, known, n=1, cutoff=CUTOFF)
        if close or re.search(r"[_-]", name):
            return close
        with_word: dict[str, set[str]] = {}
        for k in known:
            parts = re.split(r"[_-]+", k)
            for word in parts if len(parts) > 1 else ():
                if word:
                    with_word.setdefault(word, set()).add(k)
        words = difflib.get_close_matches(name, list(with_word), n=1, cutoff=CUTOFF)
        return sorted(with_word[words[0]]) if words and len(with_word[words[0]]) <= MAX_BY_WORD else []

    rng = random.Random(17)

    def word() -> str:
        return "".join(rng.choice("abcde") for _ in range(rng.randint(1, 7)))

    hinted = 0
    for _ in range(2000):
        known = [rng.choice("_-").join(word() for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 12))]
        name = word() if rng.random() < 0.7 else rng.choice(known)[:-1] + word()[:1]
        expected = reference(name, known)
        assert close_names(name, known) == expected, (name, known)
        hinted += bool(expected)
    assert hinted > 500  # the comparison covers hints, not only their absence


def test_a_refused_models_hint_is_worded_outside_the_routers_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hints of a request's unknown `models` run difflib over every routable name (milliseconds on a catalog of
    thousands, for a cheap 4xx any client can send): they were worded under the router's lock, which every decision
    takes. The refusal is worded after it is released now, by `route` and `route_many`, with the same message."""
    import threading

    import bandit_router.router as router_module

    router = Router(seed=0)
    lock_free: list[bool] = []

    def quoted_seeing_the_lock(names: Any, known: Any) -> str:
        def probe() -> None:
            got = router._lock.acquire(timeout=0)
            if got:
                router._lock.release()
            lock_free.append(got)

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        return quoted_few(names, known)

    monkeypatch.setattr(router_module, "quoted_few", quoted_seeing_the_lock)
    message = "unknown or retired models: 'gpt-4o-mni' (did you mean gpt-4o-mini?)"
    assert _raised(lambda: router.route(Request(prompt="x", models=("gpt-4o", "gpt-4o-mni")))) == message
    out = router.route_many([Request(prompt="x", models=("gpt-4o-mni",)), Request(prompt="y"), Request(prompt="z")])
    assert str(out[0]) == message and isinstance(out[0], BanditRouterError)
    assert not isinstance(out[1], Exception) and not isinstance(out[2], Exception)
    assert lock_free == [True, True]


def test_against_a_long_model_list_the_hint_is_difflibs_and_computes_few_of_its_ratios(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A misspelt full model name against 2,000 catalog names ran difflib's full ratio for 43–396 of them (names
    that share the characters of model names pass its quick bounds): 10–25 ms on the event loop for the gateway's
    `models` knob. The names are now taken by falling quick ratio, each bounded by the longest common subsequence
    first: a typo computes one ratio, a name close to none (its origin's characters shuffled) none, and the hint is
    the one difflib gives (speed: `benchmarks/bench_hints.py`)."""
    import difflib
    import random

    from bandit_router.hints import CUTOFF, Known
    from benchmarks.bench_hints import catalog, refused

    names = catalog(2000)
    ratios = 0
    plain = difflib.SequenceMatcher.ratio

    def counted(self: difflib.SequenceMatcher[str]) -> float:
        nonlocal ratios
        ratios += 1
        return plain(self)

    for kind, most in (("typo", 1), ("close to none", 0)):
        cases, origins = refused(names, kind, random.Random(5))
        for name, origin in zip(cases, origins, strict=True):
            expected = difflib.get_close_matches(name, names, n=1, cutoff=CUTOFF)
            assert expected == ([origin] if origin else []), name  # the reference finds what the case says
            known = Known(names)
            with monkeypatch.context() as patch:
                patch.setattr(difflib.SequenceMatcher, "ratio", counted)
                ratios = 0
                found = known.closest(name)
            assert (found, ratios) == ((expected or [None])[0], most), name


def test_the_fast_hint_is_difflibs_on_seeded_lists_with_ties_and_odd_characters() -> None:
    """`Known.closest` past `FAST_FROM` candidates against `difflib.get_close_matches(name, known, n=1,
    cutoff=CUTOFF)`, on 300 seeded lists of up to 400 names from a small alphabet (many near ties, equal ratios
    broken by the greater name as difflib does, duplicates, an empty name, characters outside the BMP and a lone
    surrogate) and names that are typos, shuffles, prefixes or none of them."""
    import difflib
    import random

    from bandit_router.hints import CUTOFF, FAST_FROM, Known

    rng = random.Random(23)
    odd = ["é", "😀", "\udc80", "/", "-"]

    def word(lo: int, hi: int) -> str:
        return "".join(rng.choice("abcab12-" if rng.random() < 0.9 else odd) for _ in range(rng.randint(lo, hi)))

    fast = hinted = 0
    for _ in range(300):
        known = [word(3, 12) for _ in range(rng.randint(FAST_FROM + 1, 400))] + ["", rng.choice(["x", "ab"])]
        known += rng.sample(known, 5)  # duplicates
        for _ in range(4):
            base = rng.choice(known)
            kind = rng.randrange(4)
            if kind == 0 and len(base) > 1:
                i = rng.randrange(len(base))
                name = base[:i] + base[i + 1:]
            elif kind == 1:
                name = "".join(rng.sample(base, len(base)))
            elif kind == 2:
                name = base[: max(1, len(base) - 2)]
            else:
                name = word(0, 14)
            expected = difflib.get_close_matches(name, known, n=1, cutoff=CUTOFF)
            hints = Known(known)
            assert hints.closest(name) == (expected[0] if expected else None), (name, known)
            fast += hints._bounds is not None
            hinted += bool(expected)
    assert fast > 800 and hinted > 600  # the fast path answered (882 of 1,200), with hints (736), not only none


@pytest.mark.parametrize("alphabet", ["cjk", "U+10FFFD"])
def test_a_catalog_of_cjk_names_or_with_a_far_code_point_gets_difflibs_hint_in_little_memory(alphabet: str) -> None:
    """The quick ratios' counts were a |names| × (distinct characters of every name) matrix, through a table sized
    by the largest code point, built per refusal: 2,000 names of CJK characters took 290 MB (580 MB at its peak),
    one name with a character near U+10FFFF a 1.1M-entry table. Only the refused name's characters are counted
    now: the hint is still difflib's (typos and shuffles), in a few MB however wide the catalog's alphabet."""
    import difflib
    import random
    import tracemalloc

    from bandit_router.hints import CUTOFF, Known
    from benchmarks.bench_hints import catalog, cjk_catalog, refused

    names = cjk_catalog(2000, 20000) if alphabet == "cjk" else [*catalog(2000), "acme/model-\U0010fffd"]
    cases = [name for kind in ("typo", "close to none") for name in refused(names, kind, random.Random(3))[0]]
    cases += ["acme/model-\U0010fffe", "acme/model-\U0010fffd"[:-1]]  # the far code point's own neighbours
    for name in cases:
        expected = difflib.get_close_matches(name, names, n=1, cutoff=CUTOFF)
        tracemalloc.start()
        try:
            found = Known(names).closest(name)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert found == (expected[0] if expected else None), name
        assert peak < 8e6, (name, peak)


def test_past_the_cell_budget_the_counts_are_taken_a_block_of_names_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused name whose counts would take more than `BOUNDS_CELLS` cells was left to difflib's loop over every
    length-feasible name (22.8 s against 100,000 names); the counts are taken a block of names at a time (here of
    at most 1,000 cells and characters), difflib's loop is not run, and the hint is difflib's."""
    import random

    from bandit_router import hints
    from benchmarks.bench_hints import catalog, cjk_catalog, refused

    monkeypatch.setattr(hints, "BOUNDS_CELLS", 1000)  # fewer than 1,000 names × any name's characters
    plain = difflib.get_close_matches
    looked: list[int] = []

    def counted(word: str, possibilities: Any, *args: Any, **kwargs: Any) -> list[str]:
        looked.append(len(possibilities))
        return plain(word, possibilities, *args, **kwargs)

    monkeypatch.setattr(difflib, "get_close_matches", counted)
    for names in (catalog(1000), cjk_catalog(300, 2000), [*catalog(300), "acme/model-\U0010fffd", ""]):
        bounds_of.cache_clear()
        for name in [*refused(names, "typo", random.Random(4))[0][:5], "", names[3] * 3]:
            expected = plain(name, names, n=1, cutoff=hints.CUTOFF)
            assert hints.Known(names).closest(name) == (expected[0] if expected else None), name
    assert looked and all(n <= hints.FAST_FROM for n in looked)  # difflib's loop only over a few candidates


def test_a_list_too_large_to_keep_is_not_kept_and_past_the_hint_budget_there_is_no_hint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`bounds_of` kept the index of any list (100,000 names of 128 characters: 105 MB each, 8 of them); a list of
    more than `KEPT_UP_TO` characters is indexed for its refusal only, and past `HINTS_UP_TO` characters a name
    among more than `FAST_FROM` length-feasible ones gets no hint (the search reads every character)."""
    from bandit_router import hints
    from benchmarks.bench_hints import catalog

    names = catalog(400)
    size = sum(map(len, names))
    typo = names[7][:-1] + "#"
    expected = difflib.get_close_matches(typo, names, n=1, cutoff=CUTOFF)[0]
    bounds_of.cache_clear()
    monkeypatch.setattr(hints, "KEPT_UP_TO", size)
    assert hints.Known(names).closest(typo) == expected and bounds_of.cache_info().currsize == 1
    bounds_of.cache_clear()
    monkeypatch.setattr(hints, "KEPT_UP_TO", size - 1)
    assert hints.Known(names).closest(typo) == expected and bounds_of.cache_info().currsize == 0
    monkeypatch.setattr(hints, "HINTS_UP_TO", size - 1)
    assert hints.Known(names).closest(typo) is None and did_you_mean(typo, names) == ""
    assert hints.Known(names[:50]).closest(typo) == expected  # fewer candidates than FAST_FROM: difflib's loop


def test_the_character_index_is_built_once_per_list_of_names_and_follows_a_changed_catalog() -> None:
    """The index of a long list's characters (`_Bounds`) was rebuilt for every refused name. It is kept per list
    (`bounds_of`): a second refusal against the same names reuses it, and a list that changed (a model added, one
    retired) gets its own, so the hint is the one difflib gives for the names as they are now."""

    def difflibs(names: list[str]) -> str:
        return f" (did you mean {difflib.get_close_matches(typo, names, n=1, cutoff=CUTOFF)[0]}?)"

    bounds_of.cache_clear()
    names = [f"acme/model-{i:03d}-instruct" for i in range(200)]
    typo = "acme/model-1234-instruct"
    first = did_you_mean(typo, names)
    assert first == did_you_mean(typo, list(names)) == difflibs(names)
    assert bounds_of.cache_info().misses == 1 and bounds_of.cache_info().hits == 1
    added = [*names, "acme/model-1234-instructs"]  # a closer name added at run time
    assert did_you_mean(typo, added) == " (did you mean acme/model-1234-instructs?)" == difflibs(added)
    retired = [n for n in names if f"mean {n}?" not in first]  # the hint's model retired: another is the closest
    assert did_you_mean(typo, retired) == difflibs(retired) != first
    assert did_you_mean(typo, names) == first  # the first list's, again
    assert bounds_of.cache_info().misses == 3


def test_quoted_few_names_each_name_once_the_first_five_then_how_many_more() -> None:
    """A request's `models` may list 1,024 names: the router's, the gateway's and a named router's refusals repeated
    every unknown one (the gateway's first five, duplicates included) (found by review22scale)."""
    assert quoted_few(["gpt-4o-mni"] * 1024, ["gpt-4o-mini"]) == "'gpt-4o-mni' (did you mean gpt-4o-mini?)"
    said = quoted_few([f"zz{i}" for i in range(1024)], ["gpt-4o-mini"])
    assert said == "'zz0', 'zz1', 'zz2', 'zz3', 'zz4' and 1019 more"
