"""Counterfactual evaluation from logs: would another policy, or other settings, have done better here?

estimators   IPS, ClippedIPS, SNIPS, DirectMethod, DoublyRobust → Estimate (value, interval, ESS, n)
reward_models  ridge per model on context features, cross-fitted, for DM and DR
log          LoggedRecord (a Decision + its Outcome) → LogArrays (aligned arrays over the models)
candidates   "vw-squarecb:gamma_scale=50@lambda=40", "logged", "shadow:NAME" → Candidate
replay       a candidate's pmf on every logged decision (learning, frozen or Li et al. replay)
scope        Scope(policy, since, until, tenant): the decisions an evaluation scores
overlap      effective sample size and support diagnostics, with warnings
evaluate     evaluate_log(records, candidates, models=…, config=EvaluationConfig(…)) → Evaluation (one record
             per candidate × estimator)
report       write_evaluation(out_dir, evaluation): evaluation.json, evaluation.md, evaluation.png
dsjson       export_dsjson(records, fp): Vowpal Wabbit decision-service JSON
synthetic    logs with exactly known policy values, for tests and experiments
"""

from .candidates import Candidate, baseline_candidates, parse_candidate
from .dsjson import export_dsjson, to_dsjson
from .estimators import (
    ESTIMATORS,
    IPS,
    SNIPS,
    ClippedIPS,
    DirectMethod,
    DoublyRobust,
    Estimate,
    Estimator,
    effective_sample_size,
    importance_weights,
    make_estimator,
)
from .evaluate import (
    DEFAULT_ESTIMATORS,
    EstimateRecord,
    Evaluation,
    EvaluationConfig,
    PromotionCheck,
    evaluate_log,
    promotion_check,
)
from .log import LogArrays, LoggedRecord, log_arrays, realised_cost
from .overlap import Overlap, OverlapThresholds, overlap
from .replay import MODES, ReplayResult, replay
from .report import (
    best_trusted,
    format_best,
    format_markdown,
    format_table,
    plot_evaluation,
    ranked_candidates,
    write_evaluation,
)
from .reward_models import RewardFit, RewardModel, RidgeRewardModel, fit_rewards
from .scope import Scope, parse_time

__all__ = [
    "DEFAULT_ESTIMATORS",
    "ESTIMATORS",
    "IPS",
    "MODES",
    "SNIPS",
    "Candidate",
    "ClippedIPS",
    "DirectMethod",
    "DoublyRobust",
    "Estimate",
    "EstimateRecord",
    "Estimator",
    "Evaluation",
    "EvaluationConfig",
    "LogArrays",
    "LoggedRecord",
    "Overlap",
    "OverlapThresholds",
    "PromotionCheck",
    "ReplayResult",
    "RewardFit",
    "RewardModel",
    "RidgeRewardModel",
    "Scope",
    "baseline_candidates",
    "best_trusted",
    "effective_sample_size",
    "evaluate_log",
    "export_dsjson",
    "fit_rewards",
    "format_best",
    "format_markdown",
    "format_table",
    "importance_weights",
    "log_arrays",
    "make_estimator",
    "overlap",
    "parse_candidate",
    "parse_time",
    "plot_evaluation",
    "promotion_check",
    "ranked_candidates",
    "realised_cost",
    "replay",
    "to_dsjson",
    "write_evaluation",
]
