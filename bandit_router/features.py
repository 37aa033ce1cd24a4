"""Request → `Context`: namespaced, hashed sparse features. Pure, deterministic, never raises on any text.

Namespaces (one letter each, the letter VW uses for interactions):

- `w` words: hashed lower-cased word unigrams and bigrams, each of value 1/√n. Words are split on white space,
  ASCII punctuation and zero width spaces; soft hyphens, word joiners and byte-order marks inside them are deleted.
- `l` length: log-scaled characters and estimated tokens, ``log1p(n) / log1p(scale)``.
- `m` markers: code, maths, list, question (`?`, `？`, `؟`, or an English question word first), non-Latin script,
  URL (value 1, or a fraction).
- `t` turns: log-scaled number of user turns in a chat.
- `c` the caller's context dict: ``key=value`` for strings and booleans (value 1), ``key`` with the value
  for numbers (signed ``log1p(|x|)``, at most `MAX_NUMBER_FEATURE` = 20 in size: |x| ≈ 4.9·10⁸ and beyond).

Features are of the text as sent (but for those invisible characters): canonically equivalent spellings, NFC `é`
and NFD `e` + U+0301, get other word features and lengths. The text is not normalised, since
`unicodedata.normalize` is quadratic in a run of out-of-order combining marks (one 40 KB prompt took 0.6-0.8 s)
and a normality check falls back to a full composition for some scripts (Tamil, Malayalam, Bengali: +37% per
extract); a client for whom it matters normalises before it sends.

Hashing is MurmurHash3 (mmh3, 32-bit, fixed seeds), never Python's salted `hash()`, so features are the same
in every process. Bigram hashes are combined from unigram hashes with an FNV-style mix in numpy.
Text beyond `max_chars` is not tokenized (the length features still see the whole text).
"""

from __future__ import annotations

import math
import re
import string
import struct
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import mmh3
import numpy as np

from .types import Context, Request, Scalar

_INVISIBLE_BREAKS = {"\u200b": " "}
"""Invisible characters that split words: ZERO WIDTH SPACE (a word break: Thai and Khmer write one between words)."""
_INVISIBLE_JOINS = {"\u00ad": None, "\u2060": None, "\ufeff": None}
"""Invisible characters inside a word, deleted: SOFT HYPHEN (web pages' hyphenation hints), WORD JOINER, and ZERO
WIDTH NO-BREAK SPACE (a byte-order mark left at a prompt's start made its first word another word, and a question
no question). ZWJ and ZWNJ stay: they change how emoji and Indic or Persian words are written."""
_PUNCTUATION_TO_SPACE = str.maketrans({**{c: " " for c in string.punctuation}, **_INVISIBLE_BREAKS,
                                       **_INVISIBLE_JOINS})
_PUNCTUATION_TO_SPACE_BYTES = bytes.maketrans(string.punctuation.encode("ascii"), b" " * len(string.punctuation))
_CODE_WORDS = frozenset(
    [
        "def",
        "class",
        "import",
        "return",
        "lambda",
        "select",
        "print",
        "console",
        "function",
        "include",
        "elif",
        "endif",
        "fn",
        "func",
        "var",
        "const",
        "let",
        "struct",
        "impl",
        "println",
        "printf",
        "sudo",
        "npm",
        "pip",
    ]
)
_CODE_SNIPPETS = ("```", "=>", "{\n", ";\n", "</", "#!/", "()")
_MATH = re.compile(r"\d\s*[-+*/^=×÷]\s*\d")
_ASCII = [chr(c) for c in range(128)]
_MATH_DIGITS = "".join(c for c in _ASCII if re.fullmatch(r"\d", c))
_MATH_OPERATORS = "".join(c for c in _ASCII if re.fullmatch(r"[-+*/^=×÷]", c))
_MATH_SPACES = "".join(c for c in _ASCII if re.fullmatch(r"\s", c)).encode("ascii")
_MATH_CLASSES = bytes.maketrans(
    (_MATH_DIGITS + _MATH_OPERATORS).encode("ascii"),
    ("0" * len(_MATH_DIGITS) + "+" * len(_MATH_OPERATORS)).encode("ascii"),
)
r"""`_MATH` on ASCII text without the regex (one translation, one substring search): delete the white space (what
`\s` matches), map the digits (`\d`) to `0` and the operators to `+`; `_MATH` matches iff `0+0` occurs then (every
other byte stays as it is, and none of them is a `0` or a `+`)."""
_MATH_WORDS = frozenset(
    [
        "solve",
        "equation",
        "integral",
        "derivative",
        "probability",
        "theorem",
        "prove",
        "calculate",
        "compute",
        "sqrt",
        "frac",
        "sum",
    ]
)
_MATH_SNIPPETS = ("\\frac", "\\int", "$$")
_LIST = re.compile(r"^[^\S\n]*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)
r"""A list item: at a line's start, white space, a bullet or `1.`/`1)`, white space, text. The same matches as
`^\s*(?:…)` (a match whose white space spans line ends also matches from the last of them), but the white space
after `^` stops at a line end: with `\s*` every line start of a run of blank lines scanned the rest of the run, so
20,000 newlines took 2·10⁸ steps (8 s of the event loop for one request)."""
_LIST_STARTS = frozenset("-*•0123456789")
_QUESTION_WORDS = frozenset(
    [
        "what",
        "why",
        "how",
        "who",
        "when",
        "where",
        "which",
        "can",
        "could",
        "is",
        "are",
        "does",
        "do",
        "should",
        "would",
    ]
)
_WIDE_QUESTION_MARKS = ("\uff1f", "\u061f")
"""Question marks besides `?`: the full-width `？` of Chinese and Japanese, and the Arabic `؟` (Arabic, Persian,
Urdu). A question in those scripts was no question: its words are none of `_QUESTION_WORDS`."""
_NON_LATIN = re.compile(
    r"[\u0370-\u03ff\u0400-\u04ff\u0590-\u06ff\u0900-\u0dff\u0e00-\u0eff\u1100-\u11ff\u3040-\u30ff"
    r"\u3400-\u9fff\uac00-\ud7af]"
)

MAX_NUMBER_FEATURE = 20.0
"""The largest size of a context number's feature, log1p(|x|) (|x| = e²⁰ − 1 ≈ 4.9·10⁸). Uncapped, one request's
1e300 put 690 into a linear policy's slot where its numbers had given a few units: that one point outweighed
thousands (the `default` policy's corrections learned from x in 0…10 lost 99.5% of their spread, and a 10¹² lost
28%). Ids and timestamps saturate; counts, sizes and amounts below it keep their own values."""
_SEED_WORD = 0x5EED
_SEED_OTHER = 0xC0FFEE
_FNV_INT, _GOLDEN_INT = 0x01000193, 0x9E3779B9
_WORD_RECORD = struct.Struct("<3I")
_WORD_RECORDS = np.dtype(("<u4", (3,)))
_CACHE_LIMIT = 200_000
_SMALL_CACHE_LIMIT = 4096


_DIGITS = re.compile(r"[0-9]")


def _has_digit(text: str) -> bool:
    return _DIGITS.search(text) is not None


def _contains_any(text: str, snippets: tuple[str, ...]) -> bool:
    """`any(s in text for s in snippets)` without a generator (a few µs per request on the hot path)."""
    for snippet in snippets:  # noqa: SIM110
        if snippet in text:
            return True
    return False


def hash_name(name: str, seed: int = _SEED_OTHER) -> int:
    """Stable 32-bit hash of a feature name."""
    return int(mmh3.hash(name.encode("utf-8", "surrogatepass"), seed, signed=False))


_Sparse = tuple[np.ndarray, np.ndarray]
_T = TypeVar("_T")


def _sparse(indices: list[int], values: list[float]) -> _Sparse:
    return np.asarray(indices, dtype=np.uint32), np.asarray(values, dtype=np.float32)


def _turn_features(turns: int) -> _Sparse:
    return _sparse([_TURNS], [_scaled_log(max(1, turns), 64)])


def _scaled_log(n: float, scale: float) -> float:
    return math.log1p(n) / math.log1p(scale)


def estimate_tokens(text: str) -> int:
    """Estimated token count: ~4 ASCII characters per token, ~1.5 characters per token otherwise.

    Close to cl100k for English prose and code; a routing estimate, not a tokenizer.
    """
    n = len(text)
    if n == 0:
        return 0
    n_ascii = n if n >= 1_000_000 or text.isascii() else len(text.encode("ascii", "ignore"))
    return max(1, math.ceil(n_ascii / 4 + (n - n_ascii) / 1.5))


MARKERS = ("code", "math", "list", "question", "non_latin", "url")
"""The markers a request's text may have (`Context.markers`, what a `rules` rule's `markers` name)."""
_MARKER_IDS = {name: hash_name("m=" + name) for name in MARKERS}
_LEN_CHARS = hash_name("l=chars")
_LEN_TOKENS = hash_name("l=tokens")
_TURNS = hash_name("t=turns")
_LENGTH_INDICES = np.array([_LEN_CHARS, _LEN_TOKENS], dtype=np.uint32)
_LENGTH_INDICES.setflags(write=False)


class FeatureExtractor:
    """Turns a `Request` into a `Context`. Keep one per router: it caches word hashes (bounded)."""

    def __init__(self, *, bigrams: bool = True, max_chars: int = 20_000) -> None:
        self.bigrams = bigrams
        self.max_chars = max_chars
        self._cache: dict[str, bytes] = {}
        """Word → its hash h, h·FNV and h + φ (mod 2³²), as 12 little-endian bytes (`_word_hash`; bounded)."""
        self._names: dict[str, int] = {}
        """The caller's context's feature names → their hashes (bounded)."""
        self._small: dict[tuple[Any, ...], _Sparse] = {}

    def __call__(self, request: Request) -> Context:
        # A request's context is already a read-only view of its own copy (`types.Request`): shared, not copied.
        return self._extract(request.text, request.turns, request.context)

    def _word_hash(self, word: str) -> bytes:
        """The word's 32-bit hash h and its two halves of the bigram mix, h·FNV and h + φ (mod 2³²), as three
        little-endian uint32 (how the word cache keeps them: a prompt's bigrams are then one XOR)."""
        h = int(mmh3.hash(word.encode("utf-8", "surrogatepass"), _SEED_WORD, signed=False))
        packed = _WORD_RECORD.pack(h, h * _FNV_INT & 0xFFFFFFFF, (h + _GOLDEN_INT) & 0xFFFFFFFF)
        self._cache[word] = packed
        return packed

    def words(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        return self._words(self.tokens(text))

    def tokens(self, text: str) -> list[str]:
        """Lower-cased words of `text[:max_chars]`, split on white space, ASCII punctuation and zero width
        spaces, without soft hyphens, word joiners and byte-order marks."""
        head = text[: self.max_chars]
        if head.isascii():  # the same words through bytes: a 256-byte table instead of a dict lookup per character
            return head.encode("ascii").lower().translate(_PUNCTUATION_TO_SPACE_BYTES).decode("ascii").split()
        return head.lower().translate(_PUNCTUATION_TO_SPACE).split()

    def _words(self, tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hashed unigrams (+ bigrams) of lower-cased `text` split on white space and ASCII punctuation.

        Every occurrence is one feature of value 1/√n (n = unigrams + bigrams); repeated hashes add up where
        the learner sums them (VW and the linear policies do).
        """
        if not tokens:
            return _sparse([], [])
        cache = self._cache
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cached = list(map(cache.get, tokens))
        try:  # each word's cached record: one join and one array instead of Python ints per word
            packed = b"".join(cached)  # type: ignore[arg-type]  # a word not seen yet (None) fails the join
        except TypeError:
            packed = b"".join([h if h is not None else self._word_hash(t) for h, t in zip(cached, tokens, strict=True)])
        records = np.frombuffer(packed, dtype=_WORD_RECORDS)  # (n, 3): h, h·FNV, h + φ
        n = len(tokens)
        if not self.bigrams or n == 1:
            idx = records[:, 0].astype(np.uint32)
        else:  # unigrams, then bigrams: (h_i·FNV mod 2³²) ⊕ (h_{i+1} + φ mod 2³²)
            idx = np.empty(2 * n - 1, dtype=np.uint32)
            idx[:n] = records[:, 0]
            np.bitwise_xor(records[:-1, 1], records[1:, 2], out=idx[n:])
        values = np.empty(len(idx), dtype=np.float32)
        values.fill(1.0 / math.sqrt(len(idx)))  # as np.full, without its Python wrapper
        return idx, values

    def extract(self, text: str, *, turns: int = 1, attributes: Mapping[str, Scalar] | None = None) -> Context:
        """Featurize raw text (what `__call__` does for a request)."""
        return self._extract(text, turns, MappingProxyType(dict(attributes or {})))

    def _extract(self, text: str, turns: int, attrs: Mapping[str, Scalar]) -> Context:
        """`extract` with the caller's context as a mapping nobody changes (the `Context` keeps it)."""
        n_chars = len(text)
        n_tokens = estimate_tokens(text)
        head = text[: self.max_chars]
        raw: bytes | None = None
        if head.isascii():  # as `tokens`, keeping the bytes: they also answer `_MATH` (no regex)
            raw = head.encode("ascii")
            tokens = raw.lower().translate(_PUNCTUATION_TO_SPACE_BYTES).decode("ascii").split()
        else:
            tokens = head.lower().translate(_PUNCTUATION_TO_SPACE).split()
        features: dict[str, tuple[np.ndarray, np.ndarray]] = {"w": self._words(tokens)}
        vocabulary = set(tokens)
        features["l"] = (  # the indices are always these two: one read-only array, shared
            _LENGTH_INDICES,
            np.array([_scaled_log(n_chars, 100_000), _scaled_log(n_tokens, 25_000)], dtype=np.float32),
        )
        markers: dict[str, float] = {}
        if not _CODE_WORDS.isdisjoint(vocabulary) or _contains_any(head, _CODE_SNIPPETS):
            markers["code"] = 1.0
        if (
            not _MATH_WORDS.isdisjoint(vocabulary)
            or _contains_any(head, _MATH_SNIPPETS)
            or (
                b"0+0" in raw.translate(_MATH_CLASSES, _MATH_SPACES)
                if raw is not None
                else _has_digit(head) and _MATH.search(head) is not None
            )
        ):
            markers["math"] = 1.0
        if ("\n" in head or head.lstrip()[:1] in _LIST_STARTS) and _LIST.search(head):
            markers["list"] = 1.0
        if "?" in head or (raw is None and _contains_any(head, _WIDE_QUESTION_MARKS)) or (
            tokens and tokens[0] in _QUESTION_WORDS
        ):
            markers["question"] = 1.0
        if "http://" in head or "https://" in head:
            markers["url"] = 1.0
        if head and not head.isascii():
            non_latin = len(_NON_LATIN.findall(head))
            if non_latin:
                markers["non_latin"] = min(1.0, 4.0 * non_latin / len(head))
        features["m"] = self._shared(("m", *markers.items()), self._marker_features, markers)
        features["t"] = self._shared(("t", turns), _turn_features, turns)
        key = ("c", *[(k, type(v), v) for k, v in attrs.items()])  # with the type: True == 1
        features["c"] = self._shared(key, self._context_features, attrs)
        return Context(
            features=features,
            input_tokens=n_tokens,
            n_chars=n_chars,
            turns=max(1, turns),
            markers=frozenset(markers),
            attributes=attrs,
            text=text,
        )

    def _shared(self, key: tuple[Any, ...], build: Callable[[_T], _Sparse], arg: _T) -> _Sparse:
        """The small namespaces repeat (markers, turns, the caller's context): their arrays are built once, made
        read-only, and shared by every context with the same values (bounded like the word hashes)."""
        found = self._small.get(key)
        if found is None:
            if len(self._small) >= _SMALL_CACHE_LIMIT:
                self._small.clear()
            found = build(arg)
            for array in found:
                array.setflags(write=False)
            self._small[key] = found
        return found

    @staticmethod
    def _marker_features(markers: dict[str, float]) -> _Sparse:
        return _sparse([_MARKER_IDS[m] for m in markers], list(markers.values()))

    def _name_hash(self, name: str) -> int:
        names = self._names
        h = names.get(name)
        if h is None:
            if len(names) >= _CACHE_LIMIT:
                names.clear()
            h = names[name] = hash_name(name)
        return h

    def _context_features(self, attrs: Mapping[str, Scalar]) -> tuple[np.ndarray, np.ndarray]:
        indices: list[int] = []
        values: list[float] = []
        for key in sorted(attrs):
            value = attrs[key]
            if isinstance(value, bool):
                indices.append(self._name_hash(f"c={key}={value}"))
                values.append(1.0)
            elif isinstance(value, int | float):
                x = float(value)
                if not math.isfinite(x):
                    continue
                indices.append(self._name_hash(f"c={key}"))
                values.append(math.copysign(min(math.log1p(abs(x)), MAX_NUMBER_FEATURE), x))
            else:
                indices.append(self._name_hash(f"c={key}={value}"))
                values.append(1.0)
        return _sparse(indices, values)


def dense_vector(context: Context, dim: int) -> np.ndarray:
    """Project a context onto `dim` dense dimensions for the linear policies.

    Slot 0 is a bias; slots 1…15 hold the small namespaces (length, markers, turns, caller context), hashed
    modulo 15; the words share the remaining `dim − 16` slots. `dim` must be at least 32. Values that land on
    one slot add up in namespace order, then feature order (one `bincount` for the words, a Python loop for
    the few others: a handful of numpy calls, where one `np.add.at` per namespace cost twice as much).
    """
    if dim < 32:
        raise ValueError("dense_vector needs dim >= 32")
    n_words = dim - 16
    small = [0.0] * 16
    small[0] = 1.0
    words: np.ndarray | None = None
    for ns, (idx, val) in context.features.items():
        if len(idx) == 0:
            continue
        if ns == "w":
            words = np.bincount(idx % n_words, val, minlength=n_words)  # the weights are summed as float64
        else:
            for i, v in zip(idx.tolist(), val.tolist(), strict=True):
                small[1 + i % 15] += v
    x = np.empty(dim, dtype=np.float64)
    x[:16] = small
    x[16:] = 0.0 if words is None else words
    return x
