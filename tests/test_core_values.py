"""Types, catalog, features and reward: validation tables and hypothesis properties."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit_router.catalog import Catalog, ModelSpec, default_catalog, load_catalog
from bandit_router.errors import CatalogError, InvalidInput
from bandit_router.features import FeatureExtractor, estimate_tokens
from bandit_router.policies import make_policy
from bandit_router.reward import CostModel, OutputTokenEstimator, RewardConfig, reward
from bandit_router.router import Router
from bandit_router.state import pack, unpack
from bandit_router.types import Context, Decision, Message, Outcome, Request, tenant_of

# -- types ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of prompt or messages"),
        ({"prompt": "a", "messages": ({"role": "user", "content": "b"},)}, "exactly one"),
        ({"messages": ()}, "must not be empty"),
        ({"prompt": "a", "cost_weight": math.nan}, "cost_weight"),
        ({"prompt": "a", "cost_weight": -1.0}, "cost_weight"),
        ({"prompt": "a", "cost_weight": math.inf}, "cost_weight"),
        ({"prompt": "a", "cost_weight": True}, "cost_weight"),
        ({"prompt": "a", "models": ()}, "models must not be empty"),
        ({"prompt": "a", "context": {"x": [1]}}, "context"),
        ({"prompt": "a", "context": {"x": math.nan}}, "finite"),
        # each of these was a TypeError or an AttributeError from deeper down, not the documented InvalidInput:
        ({"messages": ({"role": "user"},)}, r"messages\[0\] must have exactly the keys role and content"),
        ({"messages": ({"role": "user", "content": "b", "name": "bob"},)}, r"messages\[0\].*\['content', 'name'"),
        ({"messages": ({"role": "user", "content": 5},)}, r"messages\[0\]: role and content must be strings"),
        ({"messages": ("hi",)}, r"messages\[0\] must be a Message or a mapping"),
        ({"messages": "hi"}, "messages must be a list of messages"),
        ({"messages": Message("user", "hi")}, "messages must be a list of messages"),
        ({"prompt": 5}, "prompt must be a string"),
        ({"prompt": b"a"}, "prompt must be a string"),
        ({"prompt": "a", "models": "gpt-4o"}, "models must be a list of model names"),
        ({"prompt": "a", "models": b"gpt-4o"}, "models must be a list of model names"),
        ({"prompt": "a", "models": [1, 2]}, "models must be a list of model names"),
        ({"prompt": "a", "cost_weight": 10**400}, "cost_weight"),
        ({"prompt": "a", "cost_weight": "3"}, "cost_weight"),
        ({"prompt": "a", "decision_id": 5}, "decision_id must be a string"),
        ({"prompt": "a", "context": [("x", 1)]}, "context must be a mapping"),
    ],
)
def test_request_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Request(**kwargs)


def test_request_text_and_turns_from_messages() -> None:
    request = Request(
        messages=(
            Message("system", "be brief"),
            Message("user", "hi"),
            Message("assistant", "hello"),
            Message("user", "bye"),
        )
    )
    assert request.text == "be brief\nhi\nhello\nbye"
    assert request.turns == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quality": 1.5}, "quality"),
        ({"quality": -0.1}, "quality"),
        ({"quality": math.nan}, "quality"),
        ({"quality": True}, "quality"),
        ({"quality": 0.5, "cost_usd": -1.0}, "cost_usd"),
        ({"quality": 0.5, "cost_usd": math.inf}, "cost_usd"),
        ({"quality": 0.5, "output_tokens": -3}, "output_tokens"),
        ({"quality": 0.5, "latency_s": math.nan}, "latency_s"),
        ({"quality": 10**400}, "quality"),
        ({"quality": 0.5, "input_tokens": 10**400}, "input_tokens must be a finite number >= 0"),
        ({"quality": 0.5, "cost_usd": -(10**400)}, "cost_usd must be a finite number >= 0"),
        ({"quality": 0.5, "input_tokens": 1.5}, r"input_tokens must be a whole number >= 0, got 1.5"),
        ({"quality": 0.5, "output_tokens": 0.25}, r"output_tokens must be a whole number >= 0, got 0.25"),
    ],
)
def test_outcome_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Outcome(**kwargs)
    assert Outcome(quality=0.5, input_tokens=143.0, output_tokens=7).input_tokens == 143


@pytest.mark.parametrize("cls", ["Context", "Decision"])
def test_hand_written_initialisers_are_the_dataclass_ones(cls: str) -> None:
    """`Context` and `Decision` write their `__init__` by hand (one dict update, not one `object.__setattr__` per
    field): it takes every init field of the dataclass in order with its default, sets exactly those (and `_flat`),
    and the instances stay frozen, `dataclasses.replace` and the checks of `Decision` included."""
    import dataclasses
    import inspect

    from bandit_router import types

    kind = getattr(types, cls)
    fields = [f for f in dataclasses.fields(kind) if f.init]
    parameters = list(inspect.signature(kind.__init__).parameters.values())[1:]
    assert [p.name for p in parameters] == [f.name for f in fields]
    assert [p.default for p in parameters] == [
        inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default for f in fields
    ]
    context = FeatureExtractor().extract("hello", attributes={"tenant": "acme"})
    if cls == "Context":
        made = Context(context.features, 2, 5, 1, frozenset({"code"}), context.attributes, text="hello")
        expected = {"features": context.features, "input_tokens": 2, "n_chars": 5, "turns": 1,
                    "markers": frozenset({"code"}), "attributes": context.attributes, "text": "hello", "_flat": None}
    else:
        made = types.Decision("d", "b", 1, ("a", "b"), (0.25, 0.75), 0.75, "p", 3, 20.0, context, (1.0, 2.0), 9.0)
        expected = {"decision_id": "d", "model": "b", "arm": 1, "models": ("a", "b"), "pmf": (0.25, 0.75),
                    "probability": 0.75, "policy": "p", "policy_version": 3, "cost_weight": 20.0, "context": context,
                    "expected_cost_usd": (1.0, 2.0), "created_at": 9.0}
        with pytest.raises(ValueError, match="pmf entry"):
            dataclasses.replace(made, probability=0.25)
    assert vars(made) == expected
    assert vars(dataclasses.replace(made)) == expected
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.turns = 3  # type: ignore[misc,union-attr]


def test_a_decision_that_is_not_one_is_invalid_input() -> None:
    """`Decision.from_json` is how a caller keeps a decision between `route` and `learn`: damaged JSON (a key
    missing, a probability that is not the chosen model's, a context of another shape) is the documented
    `InvalidInput`, not a KeyError, TypeError or bare ValueError."""
    from bandit_router.router import Router

    made = Router(seed=1).route(Request(prompt="hello"))
    data = made.to_json()
    nan_pmf = (data["models"], data["pmf"])
    back = Decision.from_json(data)
    assert back.to_json() == data and back.context.same_features(made.context)
    damaged = [
        ({k: v for k, v in data.items() if k != "pmf"}, "^not a decision: missing key 'pmf'$"),
        ({**data, "probability": data["probability"] / 2}, "probability must equal the pmf entry"),
        ({**data, "model": "nope"}, "chosen model 'nope' is not among the allowed models"),
        ({**data, "pmf": data["pmf"][:-1]}, "pmf and models differ in length"),
        ({**data, "context": {}}, "^not a decision: context: missing keys 'features', 'input_tokens', 'n_chars', "
                                  "'turns', 'markers'$"),
        ({**data, "pmf": ["x"] * len(data["pmf"])}, "^not a decision: pmf must be a list of numbers, got list"),
        ([1, 2], "^not a decision: expected the JSON object Decision.to_json[(][)] gives, got list$"),
        ({**data, "cost_weight": math.nan}, "not a decision: cost_weight must be a finite number >= 0"),
        ({**data, "cost_weight": -1.0}, "not a decision: cost_weight must be a finite number >= 0"),
        ({**data, "pmf": [p if m == data["model"] else math.nan for m, p in zip(*nan_pmf, strict=True)]},
         r"not a decision: every pmf entry must be in \[0, 1\]"),
    ]
    for bad, message in damaged:
        with pytest.raises(InvalidInput, match=message):
            Decision.from_json(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("change", "message"), [
    # each was taken (and failed in `learn`, or was learned wrong) or escaped as another exception:
    ({"arm": 1.7}, "arm must be an integer, got float 1.7"),  # int(1.7): arm 1
    ({"models": "abc"}, "models must be a list of model names, got str 'abc'"),  # read letter by letter
    ({"decision_id": 12}, "decision_id must be a string, got int 12"),  # str(12)
    ({"cost_weight": True}, "cost_weight must be a number, got bool True"),  # float(True): λ = 1
    ({"created_at": math.nan}, "created_at must be a finite number"),
    ({"expected_cost_usd": [1.0]}, "expected_cost_usd must hold one finite number >= 0 per model of models"),
    # ValueError from VW in `learn` ("The weights and list don't have the same length")
    ({"context.features": {"w": [[1, 2], [1.0]]}}, "context: features 'w' must be a pair of lists of one length"),
    ({"context.features": {"w": [[-1], [1.0]]}}, r"context: features 'w': indices must be in \[0, 2\^32\)"),  # Overflow
    ({"context.markers": "code"}, "context: markers must be a list of strings, got str 'code'"),  # {'c', 'o', …}
    ({"context.input_tokens": 1.7}, "context: input_tokens must be an integer, got float 1.7"),  # int(1.7)
    ({"context.attributes": {"tenant": [1]}}, r"context: context\['tenant'\] must be a string, number or boolean"),
    ({"pmf": ["0.5"]}, r"pmf must be a list of numbers, got list \['0.5'\]"),  # float("0.5")
    ({"context": None}, "context must be the JSON object Context.to_json[(][)] gives, got NoneType"),
    ({"context.features": {"w": [[1, 2]]}}, "context: features 'w' must be a pair of lists"),  # an IndexError
    ({"context.features": {"w": [[1.7], [1.0]]}}, "context: features 'w': indices must be whole numbers"),  # index 1
    ({"context.features": {"w": [[1], ["0.5"]]}}, "context: features 'w' must be lists of numbers"),  # 0.5
])
def test_a_damaged_decision_names_its_key(change: dict[str, object], message: str) -> None:
    """`Decision.from_json` names what is wrong, as `InvalidInput`; before, a missing key was "not a decision:
    KeyError('pmf')", and these were taken, or escaped as an `OverflowError`."""
    router = Router(seed=1)
    data = router.route(Request(prompt="hello")).to_json()
    for key, value in change.items():
        if key.startswith("context."):
            data["context"] = {**data["context"], key.removeprefix("context."): value}
        else:
            data[key] = value
    with pytest.raises(InvalidInput, match=f"^not a decision: {message}"):
        Decision.from_json(data)


def test_a_decision_whose_whole_numbers_were_written_as_floats_reads_as_before() -> None:
    """A decision kept by a JSON tool that writes numbers as floats (arm 1.0, input_tokens 3.0, index 5.0), which
    `int()` read as before this release: the key-naming readers refused them ("arm must be an integer, got float
    1.0"). Whole floats are the integers (as an `Outcome`'s token counts); 1.7 is still refused (above)."""
    router = Router(seed=1)
    decision = router.route(Request(prompt="hello there"))
    data = decision.to_json()
    context = data["context"]
    floated = {**data, "arm": float(data["arm"]), "policy_version": float(data["policy_version"]),
               "context": {**context, "input_tokens": float(context["input_tokens"]), "turns": 1.0,
                           "features": {ns: [[float(i) for i in pair[0]], pair[1]]
                                        for ns, pair in context["features"].items()}}}
    back = Decision.from_json(floated)
    tokens = decision.context.input_tokens
    assert (back.arm, back.policy_version, back.context.input_tokens) == (decision.arm, 0, tokens)
    assert type(back.arm) is int and back.context.same_features(decision.context)
    assert router.learn(back, Outcome(quality=1.0)) == router.learn(decision, Outcome(quality=1.0))


def test_learn_and_route_name_an_argument_of_the_wrong_type() -> None:
    """A decision kept as its JSON, an outcome or a request as a dict, a snapshot as text: an `AttributeError`
    ("'dict' object has no attribute 'model'") or a `TypeError`; now `InvalidInput` saying what to pass."""
    router = Router(seed=1)
    decision = router.route(Request(prompt="hello"))
    cases = [
        (lambda: router.learn(decision.to_json(), Outcome(quality=1.0)),  # type: ignore[arg-type]
         r"decision must be the Decision route\(\) returned \(Decision.from_json\(data\) reads"),
        (lambda: router.learn(decision, {"quality": 1.0}), "outcome must be an Outcome"),  # type: ignore[arg-type]
        (lambda: router.reward_of(decision, None), "outcome must be an Outcome"),  # type: ignore[arg-type]
        (lambda: router.route("hello"), r"request must be a Request \(Request\(prompt=...\)"),  # type: ignore[arg-type]
        (lambda: router.route({"prompt": "hello"}), "request must be a Request"),  # type: ignore[arg-type]
        (lambda: router.restore("not bytes"), r"restore takes the bytes snapshot\(\) returned, got str"),  # type: ignore[arg-type]
        # "'Request' object has no attribute 'input_tokens'"
        (lambda: router.pmf_now(Request(prompt="hi")), r"context must be a Context \(router.featurize\(request\) "  # type: ignore[arg-type]
         r"makes one; route\(request\) decides for a Request\), got Request"),
        (lambda: router.decide(None), r"context must be a Context \(router.featurize\(request\)\), got NoneType"),  # type: ignore[arg-type]
        # "'NoneType' object has no attribute 'strip'"
        (lambda: make_policy(None), 'a policy spec is a string such as "linucb:alpha=0.5", got NoneType'),  # type: ignore[arg-type]
    ]
    for call, message in cases:
        with pytest.raises(InvalidInput, match=message):
            call()
    assert router.version == 0


def test_decision_ids_are_unique_across_threads_and_forked_processes() -> None:
    """Ids come from a pool of random hex digits: threads share it under a lock, and a process forked after the pool
    was filled (gunicorn's or multiprocessing's fork, a library user's worker pool) must not draw the parent's next
    random digits (ids made in the same millisecond by both would be equal)."""
    import os
    import threading

    from bandit_router.ids import new_decision_id

    made: list[list[str]] = [[] for _ in range(4)]
    threads = [threading.Thread(target=lambda out=out: out.extend(new_decision_id() for _ in range(3000)))
               for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every) == 12_000 and all(len(i) == 32 for i in every)

    new_decision_id()  # the pool is filled before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, " ".join(new_decision_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode().split()
    os.waitpid(pid, 0)
    parent = [new_decision_id() for _ in range(100)]
    assert len(child) == 100
    assert not {i[12:] for i in child} & {i[12:] for i in parent}  # the random digits after the milliseconds


def test_context_json_round_trip() -> None:
    context = FeatureExtractor()(Request(prompt="def f(x): return x  # why?", context={"tenant": "a", "n": 3}))
    again = Context.from_json(context.to_json())
    assert again.same_features(context)
    assert (again.input_tokens, again.markers, dict(again.attributes)) == (
        context.input_tokens,
        context.markers,
        dict(context.attributes),
    )


def test_a_decisions_repr_shows_the_contexts_sizes_not_the_prompt() -> None:
    """The dataclass repr of `Context` held the prompt and every hashed feature: a 100 KB prompt's decision printed
    101 KB, the prompt in full, into whatever logged it or showed it in a traceback."""
    secret = "confidential-" + "word " * 20_000
    decision = Router(seed=1).route(Request(prompt=secret, context={"tenant": "acme"}))
    shown = repr(decision)
    assert "confidential" not in shown and len(shown) < 2_000
    assert f"text=<{len(secret)} characters>" in shown and "n_chars=100013" in shown and "'tenant': 'acme'" in shown


def test_the_values_pickle_and_deep_copy_and_stay_read_only() -> None:
    """A decision, a request, a model spec, a catalog, budgets and a logged record hold read-only mappings
    (`MappingProxyType`), which neither pickle nor `copy.deepcopy` could copy: "cannot pickle 'mappingproxy'
    object" for a decision sent to a process pool or a deep copy of a spec."""
    import copy
    import pickle

    from bandit_router.budgets import BudgetConfig
    from bandit_router.evaluation import LoggedRecord

    catalog = default_catalog()
    decision = Router(catalog, seed=1).route(Request(prompt="hello", context={"tenant": "acme"}))
    record = LoggedRecord(decision, Outcome(quality=0.5), shadow_pmfs={"linucb": decision.pmf})
    budgets = BudgetConfig.from_strings(["avg_cost_usd=0.001", "@acme:spend_usd=5/1d"])
    request = Request(prompt="hello", context={"tenant": "acme"})
    for again in (pickle.loads(pickle.dumps((decision, record, budgets, request, catalog))),
                  copy.deepcopy((decision, record, budgets, request, catalog))):
        d, r, b, q, c = again
        assert d.to_json() == decision.to_json() and d.context.text == "hello"
        assert r.shadow_pmfs == {"linucb": decision.pmf} and b == budgets and q == request
        assert list(c) == list(catalog) and c.names == catalog.names
        for mapping in (d.context.attributes, r.shadow_pmfs, b.tenants, q.context, c[c.names[0]].tags):
            with pytest.raises(TypeError):
                mapping["x"] = 1  # type: ignore[index]


# -- catalog ----------------------------------------------------------------------------------------------


def test_default_catalog_has_real_models_across_tiers() -> None:
    catalog = default_catalog()
    assert len(catalog) >= 5
    assert len({m.tier for m in catalog}) >= 3
    assert catalog.prices_read_on
    assert all(m.input_usd_per_mtok > 0 and m.output_usd_per_mtok > 0 for m in catalog)
    assert catalog["gpt-4o-mini"].cost_usd(1_000_000, 0) == pytest.approx(0.15)


GOOD = '[[models]]\nname = "a"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + GOOD, "duplicate model name 'a'"),
        (GOOD.replace("= 1", "= -1"), "must not be negative"),
        (GOOD.replace("= 2", '= "two"'), "finite number"),
        ('[[models]]\nname = "a"\n', "missing keys"),
        (GOOD + "colour = 1\n", "unknown keys"),
        ("models = 3", "non-empty list"),
        ("[[models]\n", "not valid TOML"),
        (GOOD.replace('"a"', '"a b"'), "no spaces"),
        (GOOD + "tags = { tier = 1 }\n", "tags must map strings"),
        (GOOD + "prior_quality = 1.5\n", "prior_quality must be in"),
        (GOOD + "prior_quality = -0.1\n", "must not be negative"),
        (GOOD + "prior_quality = 0.8\nprior_strength = 0\n", "prior_strength must be > 0"),
        (GOOD + "prior_quality = 0.8\nprior_strength = 1e300\n", "prior_strength must be at most 1e6"),
        (GOOD + "prior_strength = 3\n", "prior_strength needs a prior_quality"),
        # a misspelt table was ignored, and the models in it with it
        (GOOD + '[[modles]]\nname = "b"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n',
         r"unknown keys \['modles'\] \(did you mean models\?\)"),
        # the bounds POST /v1/models has: a price near the float range made a call's cost inf (a 500 per route)
        (GOOD.replace("= 1", "= 1e308"), "input_usd_per_mtok must be at most 1e6"),
        (GOOD + "output_tokens = 1e308\n", "output_tokens must be at most 1e"),
        (GOOD + "latency_s = 1e9\n", "latency_s must be at most 3600"),
    ],
)
def test_catalog_loader_gives_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog(path)
    assert str(path) in str(info.value)


def test_catalog_loader_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no such file"):
        load_catalog(tmp_path / "nope.toml")


def test_catalog_loader_names_a_folder_instead_of_raising_oserror(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path)


toml_values = st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=5), st.booleans())


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["name", "input_usd_per_mtok", "output_usd_per_mtok", "tags", "x"]), toml_values, max_size=5
    )
)
def test_catalog_from_any_mapping_is_valid_or_a_catalog_error(entry: dict) -> None:
    try:
        catalog = Catalog.from_mapping({"models": [entry]})
    except CatalogError:
        return
    spec = next(iter(catalog))
    assert spec.input_usd_per_mtok >= 0 and spec.output_usd_per_mtok >= 0


@pytest.mark.parametrize(("models", "message"), [
    ("gpt-4o", "a catalog takes a list of ModelSpecs, got str"),  # "'str' object has no attribute 'name'"
    ({"models": []}, r"got dict \(Catalog.from_mapping reads"),
    ([{"name": "a", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0}],
     r"a catalog takes ModelSpecs, got dict \(ModelSpec.from_json\(entry\)"),  # "'dict' object has no …"
])
def test_a_catalog_of_other_things_than_specs_is_a_catalog_error(models: Any, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        Catalog(models)


# -- features ---------------------------------------------------------------------------------------------

ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=400)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT, st.integers(1, 50))
def test_features_never_raise_and_are_deterministic(text: str, turns: int) -> None:
    a = FeatureExtractor().extract(text, turns=turns)
    b = FeatureExtractor().extract(text, turns=turns)
    assert a.same_features(b)
    for idx, val in a.features.values():
        assert idx.dtype == np.uint32 and val.dtype == np.float32 and len(idx) == len(val)
        assert np.isfinite(val).all()
    assert a.input_tokens == estimate_tokens(text) >= 0


@pytest.mark.parametrize(
    "text",
    ["", "\x00" * 100, "\ud800\udfff\ud800", "😀" * 50, "مرحبا بالعالم שלום", "a" * 1_000_000, " \n\t " * 1000],
)
def test_features_on_odd_text(text: str) -> None:
    context = FeatureExtractor()(Request(prompt=text))
    assert context.n_chars == len(text)


def test_features_are_of_the_text_as_sent_not_its_nfc() -> None:
    """NFC and NFD spellings are not composed (composing is quadratic in a run of out-of-order combining marks):
    the context keeps the text as sent, so its length and a rules regex written decomposed are the sent text's."""
    decomposed = "Tie\u0302\u0301ng Vie\u0323\u0302t cafe\u0301"
    context = FeatureExtractor().extract(decomposed)
    assert (context.text, context.n_chars) == (decomposed, len(decomposed))
    assert re.search("cafe\u0301", context.text)


@pytest.mark.parametrize(
    ("text", "plain"),
    [("\ufeffWhat is this", "What is this"), ("hello\u200bworld", "hello world"), ("ex\u00adam\u2060ple", "example"),
     ("สวัสดี\u200bครับ", "สวัสดี ครับ")],
)
def test_invisible_characters_split_or_join_words_as_they_are_read(text: str, plain: str) -> None:
    """A byte-order mark at a prompt's start made its first word another word (and the question no question); a
    zero width space between words (Thai's word break) glued them; a soft hyphen or word joiner split a word's
    hash from the word's. The words and markers are those of the text as it reads."""
    a, b = FeatureExtractor().extract(text), FeatureExtractor().extract(plain)
    assert a.features["w"][0].tolist() == b.features["w"][0].tolist() and a.markers == b.markers


@pytest.mark.parametrize("text", ["你好吗？", "元気ですか？", "هل أنت بخير؟", "حالت چطور است؟"])
def test_a_question_in_chinese_japanese_arabic_or_persian_is_a_question(text: str) -> None:
    """Only `?` and English question words marked a question: the full-width `？` and the Arabic `؟` did not."""
    assert "question" in FeatureExtractor().extract(text).markers


def test_features_are_the_same_in_another_process() -> None:
    code = (
        "from bandit_router.features import FeatureExtractor;"
        "c = FeatureExtractor().extract('Sort a list in Python? def f(): pass');"
        "print(sorted(int(i) for i in c.features['w'][0])[:10])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    here = FeatureExtractor().extract("Sort a list in Python? def f(): pass")
    assert out.strip() == str(sorted(int(i) for i in here.features["w"][0])[:10])


@pytest.mark.parametrize(
    ("text", "markers"),
    [
        ("def add(a, b):\n    return a + b", {"code"}),
        ("Solve 3x + 4 = 10 for x", {"math"}),
        ("- milk\n- eggs\n- bread", {"list"}),
        ("What is the capital of France?", {"question"}),
        ("Привет, как дела", {"non_latin"}),
        ("see https://example.org", {"url"}),
        ("I like quiet evenings.", set()),
    ],
)
def test_markers(text: str, markers: set[str]) -> None:
    assert FeatureExtractor().extract(text).markers == markers


def test_math_marker_on_ascii_text_is_the_regex() -> None:
    """On ASCII text the `math` marker's "digit, operator, digit" comes from one byte translation
    (`features._MATH_CLASSES`), on other text from the regex `features._MATH`: on random text of digits, operators,
    every ASCII white space and a few other characters, the two agree, and so do the markers of the same text with
    and without a non-ASCII word after it."""
    from bandit_router import features

    rng = np.random.default_rng(3)
    alphabet = [*"0123456789+-*/^=x.,(_", *(chr(c) for c in range(128) if chr(c).isspace()), "\x00", "\x7f"]
    fx = FeatureExtractor()
    found = 0
    for i in range(20_000):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 12))))
        expected = features._MATH.search(text) is not None
        assert (b"0+0" in text.encode("ascii").translate(features._MATH_CLASSES, features._MATH_SPACES)) == expected
        if i % 10 == 0:
            assert ("math" in fx.extract(text).markers) == expected == ("math" in fx.extract(text + " é").markers)
        found += expected
    assert 2_000 < found < 18_000


def test_list_marker_matches_what_the_multiline_regex_with_spanning_white_space_matched() -> None:
    """`features._LIST` stops its leading white space at a line end (linear time); on random text of line ends,
    every kind of white space, bullets, digits and letters it finds a list exactly where the earlier pattern, whose
    `^\\s*` spanned line ends, found one: the `list` marker, and so what is learned from it, is unchanged."""
    from bandit_router import features

    earlier = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)
    rng = np.random.default_rng(5)
    alphabet = ["\n", " ", "\t", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u3000", *"-*•12.)a"]
    found = 0
    for _ in range(50_000):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 14))))
        expected = earlier.search(text) is not None
        assert (features._LIST.search(text) is not None) == expected, repr(text)
        found += expected
    assert 2_000 < found < 48_000


def test_blank_lines_take_linear_time_to_featurize() -> None:
    """200,000 line ends (a body of 200 KB) are featurized in well under the 60 s given here (a blank-line run
    cost the list marker time quadratic in its length: 20,000 took 8 s, 200,000 would take 15 minutes)."""
    code = ("from bandit_router.features import FeatureExtractor;"
            "print(sorted(FeatureExtractor(max_chars=200_000).extract('\\n' * 200_000).markers))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_caller_context_becomes_features() -> None:
    fx = FeatureExtractor()
    a = fx(Request(prompt="hi", context={"tenant": "acme"}))
    b = fx(Request(prompt="hi", context={"tenant": "zeta"}))
    assert not a.same_features(b)
    assert a.features["w"][0].tolist() == b.features["w"][0].tolist()


# -- reward -----------------------------------------------------------------------------------------------

finite = st.floats(0, 1, allow_nan=False)


@given(finite, finite, st.floats(0, 10), st.floats(0, 10), st.floats(0, 1000))
def test_reward_is_monotone_in_quality_and_cost(q1: float, q2: float, c1: float, c2: float, lam: float) -> None:
    lo_q, hi_q = sorted((q1, q2))
    lo_c, hi_c = sorted((c1, c2))
    assert reward(hi_q, lo_c, cost_weight=lam) >= reward(lo_q, lo_c, cost_weight=lam)
    assert reward(lo_q, lo_c, cost_weight=lam) >= reward(lo_q, hi_c, cost_weight=lam)
    assert reward(q1, c1, 2.0, cost_weight=lam, latency_weight=0.1) == pytest.approx(q1 - lam * c1 - 0.2)


@pytest.mark.parametrize(
    ("args", "weights"),
    [
        ((0.5, 1e308), {"cost_weight": 20.0}),  # λ·cost overflows: was −inf
        ((0.5, 1e300, 1e300), {"cost_weight": 0.0, "latency_weight": 1e10}),  # μ·latency overflows
        ((0.5, math.inf), {"cost_weight": 0.0}),  # 0·inf: was NaN
        ((0.5, math.nan), {"cost_weight": 1.0}),
        ((0.5, 1.0), {"cost_weight": math.inf}),
    ],
)
def test_a_reward_that_is_not_finite_is_invalid_input(args: tuple[float, ...], weights: dict[str, float]) -> None:
    """quality − λ·cost − μ·latency of finite but huge values overflowed to −inf (and a NaN gave NaN), which a
    policy then learned from; it is `InvalidInput` saying which terms must be finite."""
    with pytest.raises(InvalidInput, match=r"is not a finite number: costs, latencies, λ, μ and their products"):
        reward(*args, **weights)
    assert reward(0.5, 1e300, cost_weight=1e-300) == pytest.approx(-0.5)  # huge terms whose product is fine


def test_learning_an_outcome_whose_reward_overflows_refuses_it_and_learns_nothing() -> None:
    router = Router(list(default_catalog())[:3], "linucb", seed=1)
    decision = router.route(Request(prompt="sum a list"))
    before = router.snapshot()
    with pytest.raises(InvalidInput, match="not a finite number"):
        router.learn(decision, Outcome(quality=0.5, cost_usd=1e308))
    assert router.snapshot() == before and router.version == 0
    assert router.learn(decision, Outcome(quality=0.5, cost_usd=0.01)) == pytest.approx(0.5 - 20 * 0.01)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cost_weight": -1.0}, "cost_weight must be a finite number >= 0, got -1.0"),
        ({"latency_weight": math.nan}, "latency_weight must be a finite number >= 0, got nan"),
        ({"cost_weight": "20"}, "cost_weight must be a finite number >= 0, got '20'"),
        ({"cost_weight": None}, "cost_weight must be a finite number >= 0, got None"),
        ({"latency_weight": True}, "latency_weight must be a finite number >= 0, got True"),
    ],
)
def test_a_bad_reward_config_is_invalid_input_naming_the_setting(settings: dict[str, object], message: str) -> None:
    """`RewardConfig` is public: a bad λ or μ is the documented `InvalidInput` (it was a bare ValueError, or a
    TypeError from `math.isfinite` for a string)."""
    with pytest.raises(InvalidInput, match=f"^{re.escape(message)}$"):
        RewardConfig(**settings)  # type: ignore[arg-type]
    assert RewardConfig(cost_weight=0, latency_weight=2).latency_weight == 2


def test_cost_from_tokens_and_learned_output_length() -> None:
    spec = ModelSpec("m", 2.0, 8.0, output_tokens=100)
    model = CostModel(output_tokens=OutputTokenEstimator(prior_weight=1.0))
    assert model.realised_cost(spec, Outcome(quality=1, input_tokens=1000, output_tokens=500), 10) == pytest.approx(
        (1000 * 2 + 500 * 8) / 1e6
    )
    assert model.realised_cost(spec, Outcome(quality=1, cost_usd=0.5), 10) == 0.5
    before = model.expected_costs([spec], 1000)[0]
    for _ in range(50):
        model.observe(spec, Outcome(quality=1, output_tokens=900))
    after = model.expected_costs([spec], 1000)[0]
    assert after > before
    assert model.output_tokens.estimate(spec) == pytest.approx((100 + 50 * 900) / 51)


def test_a_feedback_counts_at_most_ten_times_the_estimate_in_the_learned_means() -> None:
    """`OutputTokenEstimator` and `LatencyEstimator` bound each feedback by `OUTLIER_FACTOR` × the estimate before
    it (at least 1 token, 1 ms): 10¹⁵ tokens raise a fresh model's ô from 100 to (5·100 + 1000)/6, not to 1.7·10¹⁴."""
    spec = ModelSpec("m", 2.0, 8.0, output_tokens=100, latency_s=2.0)
    model = CostModel()
    model.observe(spec, Outcome(quality=1, output_tokens=10**15, latency_s=1e9))
    assert model.output_tokens.estimate(spec) == pytest.approx((5 * 100 + 10 * 100) / 6)
    assert model.latency.estimate(spec) == pytest.approx((5 * 2.0 + 10 * 2.0) / 6)
    model.observe(spec, Outcome(quality=1, output_tokens=300, latency_s=3.0))  # within bounds: counted whole
    assert model.output_tokens.estimate(spec) == pytest.approx((5 * 100 + 1000 + 300) / 7)
    silent = ModelSpec("s", 1.0, 1.0, output_tokens=0)  # an estimate of 0 still learns (from the 1-token floor)
    model.observe(silent, Outcome(quality=1, output_tokens=50))
    assert model.output_tokens.estimate(silent) == pytest.approx(10 / 6)


# -- state ------------------------------------------------------------------------------------------------


def test_state_pack_round_trip_without_pickle() -> None:
    tree = {"a": np.arange(6.0).reshape(2, 3), "b": b"\x00\x01", "c": [1, 2.5, "x", None, True], "d/e": {"f": 1}}
    back = unpack(pack(tree))
    assert np.array_equal(back["a"], tree["a"]) and back["b"] == tree["b"]
    assert back["c"] == tree["c"] and back["d/e"] == {"f": 1}
    with pytest.raises(ValueError, match="not a bandit-router state") as refused:
        unpack(b"garbage")
    assert "pickle" not in str(refused.value)  # numpy's "load it unsafely using allow_pickle=" was passed on
    with pytest.raises(ValueError, match="not a bandit-router state"):
        unpack(pack(tree)[:100])  # a zip cut short


def test_catalog_priors_round_trip_with_a_default_strength(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(GOOD + "prior_quality = 0.8\n")
    spec = load_catalog(path)["a"]
    assert (spec.prior_quality, spec.prior_strength) == (0.8, 2.0)
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_default_catalog_ships_priors_for_every_model() -> None:
    assert all(m.prior_quality is not None and 0 < m.prior_quality < 1 for m in default_catalog())


@pytest.mark.parametrize(("value", "tenant"), [
    ("acme", "acme"), ("5.0", "5.0"), (5, "5"), (5.0, "5"), (-3.0, "-3"), (-0.0, "0"), (5.5, "5.5"),
    (2.0**53, "9007199254740992"), (10**17, "100000000000000000"), (True, "True"), (None, None),
])
def test_one_rule_names_a_tenant(value: object, tenant: str | None) -> None:
    """`tenant_of`: strings and integers as they were always stored (`str(value)`), an integral float as the
    integer it is (JSON does not tell 5 from 5.0)."""
    assert tenant_of(value) == tenant


@pytest.mark.parametrize("value", [1e17, -1e17, 2.0**53 + 2, 1e300])
def test_a_float_tenant_beyond_2_53_is_refused_naming_the_limit(value: float) -> None:
    """Beyond ±2⁵³ a float names no one integer: 1e17 was tenant "1e+17" and the integer 100000000000000000 tenant
    "100000000000000000", one number in two tenants (two budgets). Refused where a tenant is named and where a
    request is made, naming the limit (the service's context numbers stop there already)."""
    with pytest.raises(InvalidInput, match=r"beyond ±2\^53 \(9007199254740992\)"):
        tenant_of(value)
    with pytest.raises(InvalidInput, match=r"context\['tenant'\].*beyond ±2\^53"):
        Request(prompt="x", context={"tenant": value})
    assert Request(prompt="x", context={"n": value}).context["n"] == value  # other numbers are only features
