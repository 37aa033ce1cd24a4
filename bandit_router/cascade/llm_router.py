"""An LLM as the router: the prompt that shows it the request and the candidates, and the parsing of its reply.

The routing model reads the request and one line per candidate (name, tags, prices, the catalog's optional
description) and is asked to reply with one name. `parse_choice` matches the reply against the candidate
names, case-insensitively: the candidate whose name occurs *first* in the reply wins, and at one position the
longest name (`gpt-4o-mini` over `gpt-4o`). A name counts only where it stands alone: not glued to more of a name
on either side, that is to a letter or digit, or to `-`, `_` or `.` followed (away from the name) by one, so
`gpt-4o-mini`, `gpt-4o_mini` and `gpt-4o.1` are never read as the candidate `gpt-4o`, while a sentence's full stop
(`… gpt-4o.`), quotes, brackets and markdown are boundaries. A colon or a slash is a boundary *before* a name (a
label or a provider's prefix: `model:gpt-4o`, `model: gpt-4o`, `openai/gpt-4o` read `gpt-4o`) but continues the name
*after* it when a letter or digit follows (a tag or a variant: `llama3:70b`, `claude-3:sonnet`, `mistral/7b` are other
models than `llama3`, `claude-3`, `mistral`; `llama3: it is cheap` and `… llama3/` still read `llama3`).
A reply that names no candidate returns None, and the caller falls back to its policy's choice.

Logged probability: the routing model is asked at temperature 0, so its choice is (up to the provider's own
nondeterminism) a function of the request: the decision is logged with the probability the *router* had of
taking that path — 1 for the named model when the reply parsed; the policy's own decision (its pmf, its policy's
name) when the reply named no candidate and the policy's model answered; 1 for the model that answered after the
named one or the policy's failed, and for the alias's first model that answered when the reply named no candidate
and the policy had none to choose (all its candidates retired or refused: `live.NamedRouters._policy_choice`)
(`live.NamedRouters._llm_router`). Offline evaluation tells them apart by the
decision's `policy` (`llm-router:<alias>` on the rows of probability 1) and the stored chain's `named` (the parsed
candidate, or null); the reply's text is in the answer's `bandit_router.reply` only, never stored. No
counterfactual probability for the other candidates is claimed: IPS estimates for a policy that would have chosen
differently have no support on the rows of probability 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..catalog import ModelSpec
from .signals import excerpt

ROUTER_INSTRUCTIONS = (
    "You route a user's request to the language model that will answer it well at the lowest cost.\n"
    "Candidates (USD per 1M input / output tokens):\n{candidates}\n\n"
    "Pick a cheap model when it is likely good enough and a strong one when the request is hard.\n"
    "Reply with exactly one candidate name and nothing else.\n\n[Request]\n{request}\n"
)
MAX_REQUEST_CHARS = 8_000
_SLOTS = re.compile(r"\{(candidates|request)\}")
_JOINERS = frozenset("-_.")
"""Characters inside names (`gpt-4o-mini`, `gpt_4o`, `llama-3.1`) that glue a name to more of one only when a letter
or digit follows them (a sentence's full stop after a name does not)."""
_SUFFIX_JOINERS = _JOINERS | frozenset(":/")
"""After a name, a colon or a slash joins too (a tag, `llama3:70b`; a variant, `mistral/7b`); before one they are a
label's or a provider's prefix (`model:gpt-4o`, `openai/gpt-4o`), a boundary."""


def _glued(text: str, i: int, direction: int) -> bool:
    """True when position `i` (just past a name, walking `direction`) continues a longer name: a letter or digit,
    or a run of joiners then one (`-_.` on either side; after the name, `:` and `/` too)."""
    joiners = _SUFFIX_JOINERS if direction > 0 else _JOINERS
    while 0 <= i < len(text) and text[i] in joiners:
        i += direction
    return 0 <= i < len(text) and text[i].isalnum()


def describe_candidate(spec: ModelSpec, description: str = "") -> str:
    """One line: `- name (tags): $in / $out per 1M tokens; description`."""
    tags = ", ".join(f"{k}={v}" for k, v in sorted(spec.tags.items()))
    line = f"- {spec.name}"
    if tags:
        line += f" ({tags})"
    line += f": ${spec.input_usd_per_mtok:g} / ${spec.output_usd_per_mtok:g}"
    if description:
        line += f"; {' '.join(description.split())[:300]}"
    return line


def router_prompt(request: str, candidates: Sequence[ModelSpec], descriptions: dict[str, str] | None = None) -> str:
    """The routing model's user message: the candidates and the request (its start and its end, where the latest
    question is, when it is longer than `MAX_REQUEST_CHARS`), filled in one pass."""
    shown = {"candidates": "\n".join(describe_candidate(m, (descriptions or {}).get(m.name, "")) for m in candidates),
             "request": excerpt(request, MAX_REQUEST_CHARS)}
    return _SLOTS.sub(lambda slot: shown[slot.group(1)], ROUTER_INSTRUCTIONS)


def parse_choice(reply: str | None, candidates: Sequence[str]) -> str | None:
    """The candidate named first in `reply` (case-insensitive; longest at a tie), or None.

    >>> parse_choice("I would use **gpt-4o-mini** here.", ["gpt-4o", "gpt-4o-mini"])
    'gpt-4o-mini'
    >>> parse_choice("Either llama-3.1-8b or gpt-4o", ["gpt-4o", "llama-3.1-8b"]), parse_choice("none", ["a1"])
    ('llama-3.1-8b', None)
    """
    if not reply:
        return None
    text = reply.lower()
    best: tuple[int, int, str] | None = None
    for name in candidates:
        needle = name.lower()
        start = text.find(needle)
        while start >= 0:
            end = start + len(needle)
            glued = _glued(text, start - 1, -1) or _glued(text, end, 1)
            if not glued:
                key = (start, -len(needle), name)
                if best is None or key < best:
                    best = key
                break
            start = text.find(needle, start + 1)
    return None if best is None else best[2]
