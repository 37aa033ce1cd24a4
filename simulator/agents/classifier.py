"""`classifier[:dim=256,ridge=1,folds=5]`: the classifier-based (predictive) router, `bandit_router`'s
`SupervisedPolicy`, driven by a `RouterAgent` (see `strategies.py` for the method and its cross-fitting)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bandit_router.catalog import ModelSpec
from bandit_router.errors import InvalidInput
from bandit_router.features import FeatureExtractor
from bandit_router.policies.base import BasePolicy
from bandit_router.policies.supervised import SupervisedParams, SupervisedPolicy
from bandit_router.types import Context

from ..environments.base import Environment
from ..specs import parse_spec
from .base import CLASSIFIER_SALT, PacerFactory
from .router_agent import RouterAgent


class CrossFitPolicy(BasePolicy):
    """Routes each prompt with the `SupervisedPolicy` fitted on the folds that do not contain it."""

    def __init__(self, fits: Sequence[SupervisedPolicy], fold_of: dict[int, int]) -> None:
        self.name = "classifier"
        self.fits, self.fold_of = list(fits), fold_of
        self.current = fits[0]

    def set_row(self, row: int) -> None:
        self.current = self.fits[self.fold_of.get(row, 0)]

    def pmf(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        return self.current.pmf(context, models, penalty, rng)


def classifier_agent(
    text: str,
    env: Environment,
    *,
    extractor: FeatureExtractor | None = None,
    pacer_factory: PacerFactory | None = None,
) -> RouterAgent:
    """A `RouterAgent` whose policy is the classifier fitted on the training part, or cross-fitted."""
    spec = parse_spec(text)
    spec.check({"dim", "ridge", "folds"})
    try:
        params = SupervisedParams(dim=spec.integer("dim", 256), ridge=spec.float("ridge", 1.0))
    except ValueError as exc:  # `dim=0`: SupervisedParams' own check, a traceback on the command line
        raise InvalidInput(f"{text}: {exc}") from None
    folds = spec.integer("folds", 5)
    if folds < 2:
        raise InvalidInput(f"{text}: folds must be >= 2")
    if not len(env.train_rows) and folds > len(env.eval_rows):  # cross-fitted: a fold with no prompt fitted nothing
        raise InvalidInput(f"{text}: folds={folds} is more than the {len(env.eval_rows)} evaluated prompt(s) it "
                           f"cross-fits; at most {len(env.eval_rows)} (one prompt per fold)")
    extractor = extractor or FeatureExtractor()
    cache: dict[int, SupervisedPolicy | CrossFitPolicy] = {}
    holder: dict[str, CrossFitPolicy] = {}

    def fitted(seed: int) -> SupervisedPolicy | CrossFitPolicy:
        if len(env.train_rows):
            key = 0  # one fit: the training part does not depend on the run
            if key not in cache:
                rows = env.train_rows
                labels = env.labels(rows, seed)
                cache[key] = SupervisedPolicy(params).fit(env.contexts(rows, extractor), env.model_names, labels)
            return cache[key]
        if seed not in cache:
            rows = env.eval_rows
            fold = np.random.default_rng([seed, CLASSIFIER_SALT]).permutation(len(rows)) % folds
            contexts = env.contexts(rows, extractor)
            labels = env.labels(rows, seed)
            fits = []
            for f in range(folds):
                train = np.flatnonzero(fold != f)
                fits.append(SupervisedPolicy(params).fit([contexts[i] for i in train], env.model_names, labels[train]))
            cache[seed] = CrossFitPolicy(fits, dict(zip(rows.tolist(), fold.tolist(), strict=True)))
        crossfit = cache[seed]
        assert isinstance(crossfit, CrossFitPolicy)
        holder["current"] = crossfit
        return crossfit

    def on_row(row: int) -> None:
        policy = holder.get("current")
        if policy is not None:
            policy.set_row(row)

    return RouterAgent(
        spec.text,
        fitted,
        extractor=extractor,
        pacer_factory=pacer_factory,
        on_row=None if len(env.train_rows) else on_row,
    )
