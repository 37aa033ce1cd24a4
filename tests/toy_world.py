"""A small routing world where the best model depends on the prompt (for the core's learning tests).

Two kinds of prompt, code and prose; four models:

| model  | tier   | P(correct) code | P(correct) prose | cost / request |
|--------|--------|-----------------|------------------|----------------|
| cheap  | small  | 0.35            | 0.50             | ≈ $0.0001      |
| coder  | medium | 0.90            | 0.55             | ≈ $0.0010      |
| writer | medium | 0.30            | 0.85             | ≈ $0.0010      |
| strong | large  | 0.95            | 0.95             | ≈ $0.0156      |

At λ = 20 the best fixed model is `coder` (expected reward ≈ 0.705); routing code → coder and prose → writer
earns ≈ 0.855. At λ = 0 `strong` is best everywhere; at λ = 1000 `cheap` is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandit_router.catalog import ModelSpec
from bandit_router.types import Outcome, Request

MODELS = (
    ModelSpec("cheap", 0.1, 0.4, {"family": "tiny", "tier": "small"}, output_tokens=250),
    ModelSpec("coder", 1.0, 4.0, {"family": "code", "tier": "medium"}, output_tokens=250),
    ModelSpec("writer", 1.0, 4.0, {"family": "prose", "tier": "medium"}, output_tokens=250),
    ModelSpec("strong", 20.0, 60.0, {"family": "frontier", "tier": "large"}, output_tokens=250),
)
QUALITY = {
    "code": {"cheap": 0.35, "coder": 0.90, "writer": 0.30, "strong": 0.95},
    "prose": {"cheap": 0.50, "coder": 0.55, "writer": 0.85, "strong": 0.95},
}
CODE = ["def", "return", "class", "import", "lambda", "function(", "python", "sort", "list", "loop", "bug", "compile"]
PROSE = ["poem", "story", "letter", "essay", "summer", "love", "friend", "describe", "beautiful", "ocean", "novel"]
COMMON = ["please", "write", "a", "the", "about", "me", "for", "my", "short", "with"]


@dataclass
class ToyWorld:
    seed: int = 0
    output_tokens: int = 250

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.specs = {m.name: m for m in MODELS}

    def request(self, cost_weight: float | None = None) -> tuple[str, Request]:
        kind = "code" if self.rng.random() < 0.5 else "prose"
        vocab = CODE if kind == "code" else PROSE
        words = list(self.rng.choice(vocab, size=6)) + list(self.rng.choice(COMMON, size=4))
        self.rng.shuffle(words)
        return kind, Request(prompt=" ".join(words), cost_weight=cost_weight)

    def expected_quality(self, kind: str, model: str) -> float:
        return QUALITY[kind][model]

    def cost(self, model: str, input_tokens: int) -> float:
        return self.specs[model].cost_usd(input_tokens, self.output_tokens)

    def outcome(self, kind: str, model: str, input_tokens: int) -> Outcome:
        quality = float(self.rng.random() < QUALITY[kind][model])
        return Outcome(quality=quality, cost_usd=self.cost(model, input_tokens), output_tokens=self.output_tokens)

    def expected_reward(self, kind: str, model: str, input_tokens: int, cost_weight: float) -> float:
        return QUALITY[kind][model] - cost_weight * self.cost(model, input_tokens)
