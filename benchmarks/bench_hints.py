"""What a did-you-mean hint costs for an unknown model name against a large catalog (`hints.quoted`, as the gateway's
`models` knob and `/v1/route`'s `models` word a refusal: on the event loop, or the thread answering the request).

    python -m benchmarks.run --only bench_hints --out benchmarks/results/NAME
    python -m benchmarks.bench_hints            (prints the rows)

Per catalog size (1,000 and 2,000 names, seeded, shaped like a gateway's catalog: `provider/family-1.2-70b-variant-
202405`) and kind of refused name, the median milliseconds of `quoted([name], names)` (one refused name) over
`NAMES` seeded names of that kind, each timed `REPEATS` times (the fastest kept), twice: with the index of the
catalog's characters built each time (`bounds_of`'s cache emptied first: the first refusal against a catalog, as
every refusal was before the index was kept), and, in the rows `…, index kept`, with it kept from the refusal
before (every later refusal against the same catalog):

- **typo**: a catalog name with one character dropped, replaced or swapped with the next (its hint is expected);
- **close to none**: a string of a catalog name's length and characters, shuffled (no hint expected);
- **short**: a one-word name of 4–8 letters (`gtp5`), which no long name is close to.

Catalogs of other alphabets, 2,000 names each, typos only: `CJK names` of 24 characters drawn from 2,000 or
20,000 CJK ideographs (a quick-ratio count per distinct character would be a 2,000 × 18,000 matrix), and the
model catalog plus one name with a character near U+10FFFF (`+ U+10FFFD`: a table indexed by code point would
have 1.1M entries).

`hinted` counts the typos whose hint is the name they came from (a check that the hint is still found, not a
speed). The machine is shared: the load average is in the note.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import time
from typing import Any

from bandit_router.hints import bounds_of, quoted

SIZES = (1000, 2000)
NAMES = 20
REPEATS = 5
SEED = 0
PROVIDERS = ("openai", "anthropic", "meta-llama", "mistralai", "qwen", "google", "deepseek", "cohere", "microsoft",
             "nvidia")
FAMILIES = ("gpt", "claude", "llama", "mistral", "qwen", "gemini", "deepseek", "command", "phi", "nemotron")
VARIANTS = ("instruct", "chat", "base", "turbo", "preview", "latest", "vision", "coder", "mini", "pro")


def catalog(size: int, seed: int = SEED) -> list[str]:
    """`size` distinct seeded model names (`provider/family-a.b-Nb-variant-yyyymm`)."""
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < size:
        names.add(f"{rng.choice(PROVIDERS)}/{rng.choice(FAMILIES)}-{rng.randint(1, 4)}.{rng.randint(0, 9)}-"
                  f"{rng.choice((7, 8, 13, 34, 70, 72, 405))}b-{rng.choice(VARIANTS)}-"
                  f"{rng.randint(2023, 2025)}{rng.randint(1, 12):02d}")
    return sorted(names)


def cjk_catalog(size: int, alphabet: int, seed: int = SEED) -> list[str]:
    """`size` distinct seeded names of 24 CJK ideographs among `alphabet` of them (from U+4E00)."""
    rng = random.Random(f"{seed}-cjk-{alphabet}")
    names: set[str] = set()
    while len(names) < size:
        names.add("".join(chr(0x4E00 + rng.randrange(alphabet)) for _ in range(24)))
    return sorted(names)


def catalogs() -> list[tuple[str, int, list[str], tuple[str, ...]]]:
    """(label, size, names, kinds of refused name measured) per catalog."""
    out: list[tuple[str, int, list[str], tuple[str, ...]]] = [
        ("", size, catalog(size), ("typo", "close to none", "short")) for size in SIZES
    ]
    for alphabet in (2000, 20000):
        out.append((f", CJK names ({alphabet:,} characters)", 2000, cjk_catalog(2000, alphabet), ("typo",)))
    out.append((", + U+10FFFD", 2001, [*catalog(2000), "acme/model-\U0010fffd"], ("typo",)))
    return out


def typo(name: str, rng: random.Random) -> str:
    """`name` with one character dropped, replaced, or swapped with the next (never `name` itself)."""
    while True:
        i = rng.randrange(len(name) - 1)
        kind = rng.choice(("drop", "replace", "swap"))
        if kind == "drop":
            out = name[:i] + name[i + 1:]
        elif kind == "replace":
            out = name[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") + name[i + 1:]
        else:
            out = name[:i] + name[i + 1] + name[i] + name[i + 2:]
        if out != name:
            return out


def refused(names: list[str], kind: str, rng: random.Random) -> tuple[list[str], list[str]]:
    """`NAMES` refused names of `kind`, and the name each came from (`""`: none)."""
    out, origins = [], []
    for _ in range(NAMES):
        origin = rng.choice(names)
        if kind == "typo":
            out.append(typo(origin, rng))
            origins.append(origin)
        elif kind == "close to none":
            letters = list(origin)
            rng.shuffle(letters)
            out.append("".join(letters))
            origins.append("")
        else:
            out.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(4, 8))))
            origins.append("")
    return out, origins


def _best_ms(name: str, names: list[str], kept: bool) -> tuple[float, str]:
    times, hint = [], ""
    quoted([name], names)  # the index of `names` kept, for `kept`
    for _ in range(REPEATS):
        if not kept:
            bounds_of.cache_clear()
        started = time.perf_counter()
        hint = quoted([name], names)
        times.append(time.perf_counter() - started)
    return min(times) * 1e3, hint


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    load = os.getloadavg()[0]
    for (label, size, names, kinds), kept in itertools.product(catalogs(), (False, True)):
        for kind in kinds:
            rng = random.Random(f"{SEED}-{size}-{kind}{label}")  # the model catalogs' seeds as before
            cases, origins = refused(names, kind, rng)
            measured = [_best_ms(name, names, kept) for name in cases]
            hinted = sum(1 for (_, hint), origin in zip(measured, origins, strict=True)
                         if origin and hint.endswith(f"(did you mean {origin}?)"))
            note = f"{size:,} names, {NAMES} seeded names (seed {SEED}), best of {REPEATS}; load {load:.2f}"
            if kind == "typo":
                note += f"; {hinted} of {NAMES} hinted with the name they came from"
            bench = f"hint: {kind}{label}{', index kept' if kept else ''}"
            rows.append({"benchmark": bench, "metric": f"p50_ms@{size}",
                         "value": round(statistics.median(ms for ms, _ in measured), 3), "unit": "ms",
                         "note": note})
            rows.append({"benchmark": bench, "metric": f"max_ms@{size}",
                         "value": round(max(ms for ms, _ in measured), 3), "unit": "ms", "note": note})
    return rows


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help; no options
    for row in run():
        print(f"{row['benchmark']:<42} {row['metric']:<14} {row['value']:>9} {row['unit']}  {row['note']}")
