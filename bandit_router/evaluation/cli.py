"""`bandit-router evaluate` and `bandit-router export`: counterfactual evaluation and DSJSON export of a service
database (the decisions the service stored, joined with the feedback it learned)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated

import typer

from ..catalog import ModelSpec
from ..config import ConfigError, load_settings
from ..errors import BanditRouterError, InvalidInput
from ..outputs import file_problem, out_problem, writing, writing_file
from ..store import SCHEMA_VERSION, ChainFeedback, Store, StoreError
from ..store.location import DatabaseURL, parse_database, redact_urls
from ..store.location import open_store as open_location
from .log import LoggedRecord
from .removed import CatalogLacksModels, without_guessed_cause
from .scope import Scope, parse_time
from .store_log import iter_log, model_specs, retired_models, shadow_names, with_feedback

EVALUATE_HELP = """Estimate, from a service database alone, what other policies would have earned on its traffic.

Every decision with learned feedback is replayed: each candidate's pmf is recomputed on the stored context
features, and IPS, clipped IPS, SNIPS, DM and DR estimate its reward (quality − λ·cost), quality and cost, with
95% intervals and the effective sample size (ESS). The logged policy, uniform random and each fixed model are
always reported too. A ⚠ marks an estimate whose overlap with the log is too poor to trust.

CANDIDATE := logged | shadow:NAME | POLICY\\[@lambda=λ,seed=N,…]   e.g. linucb:alpha=0.5  vw-greedy@lambda=40

With --escalations: the learned cascades' escalation instead (the chains learned from the log, their logged
propensities): IPS and SNIPS of each escalation rule's reward per request, final quality − λ·chain cost.
RULE := logged | accept | escalate | threshold:T (default: logged, accept, escalate, threshold:0.1 … 0.9).

Example: bandit-router evaluate --db bandit-router.db --candidates linucb:alpha=0.5 fixed:gpt-4o --out eval/
"""

EXPORT_HELP = """Export a service database's decisions with feedback as Vowpal Wabbit decision-service JSON (DSJSON).

One line per decision with learned feedback: _label_cost = −reward, the logged probability, the actions with
their logged probabilities, the stored hashed context features. Train or evaluate with VW, e.g.
`vw --cb_explore_adf --dsjson -q sa -d log.dsjson`.

With --escalations: the learned cascades' accept/escalate steps instead, one line per step, over the two actions
accept and escalate with the probabilities they were logged with, −(final quality − λ·chain cost) as the cost,
the step's score and, after the first step, the previous answer's score (what a learner's `history` reads).

Example: bandit-router export --db bandit-router.db --format dsjson --out log.dsjson
"""


def _fail(command: str, message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"bandit-router {command}: {message}", err=True)
    return typer.Exit(code)


def _refuse_with_escalations(command: str, ctx: typer.Context, names: tuple[str, ...]) -> None:
    """Fail, naming them, when options among `names` that `--escalations` does not read were given: they were
    dropped without a word (`evaluate --escalations --mode bogus --config missing.toml` ran, exit status 0 or 1)."""
    given = [param for param in ctx.command.params if param.name in names
             and getattr(ctx.get_parameter_source(param.name), "name", "") == "COMMANDLINE"]  # typer's own click
    if given:
        spelt = ", ".join("/".join(o for o in (*param.opts, *getattr(param, "secondary_opts", ())) if o[1] == "-")
                          for param in given)
        one = len(given) == 1
        raise _fail(command, f"--escalations takes no {spelt}: {'it is' if one else 'they are'} for "
                             f"{'policy candidates' if command == 'evaluate' else 'the decisions export'}; leave "
                             f"{'it' if one else 'them'} out, or leave out --escalations")


ESCALATIONS_IGNORE = {"evaluate": ("config", "estimators", "mode", "reward_lambda", "baselines", "seed", "policy",
                                   "since", "until", "tenant"),
                      "export": ("config", "include_unlabeled")}
"""The options of `evaluate` and `export` that their `--escalations` does not read."""


def _check_out(command: str, folder: Path) -> None:
    """Fail now, naming `--out`, when `folder` could not be created or written (a file there, no permission);
    nothing is created before there is something to write (`outputs.writing`)."""
    problem = out_problem(folder)
    if problem is not None:
        raise _fail(command, f"--out {folder}: {problem}")


def _check_out_file(command: str, path: Path) -> None:
    """Fail now, naming `--out`, when the file `path` could not be written; nothing is created yet."""
    problem = file_problem(path)
    if problem is not None:
        raise _fail(command, f"--out {path}: {problem}")


SQLITE_FILES = ("", "-wal", "-shm", "-journal", "-lock", "-server")
"""A SQLite database's file and the files beside it that hold its data or its locks (`<db>-wal`, …)."""


def _check_out_not_database(command: str, path: Path, db: str) -> None:
    """Fail now, naming `--out`, when the file `path` is the SQLite database `db` (or one of its files beside it,
    `SQLITE_FILES`): the export, renamed over it at the end, replaced the database it was read from."""
    try:
        location = parse_database(db)
    except ValueError:
        return  # `open_store` says why
    if isinstance(location, DatabaseURL):
        return
    for suffix in SQLITE_FILES:
        taken = Path(f"{location}{suffix}")
        try:
            same = os.path.samefile(path, taken)  # a symlink or a hard link to it too
        except OSError:  # one of them does not exist
            same = path.resolve() == taken.resolve()
        if same:
            what = "the database --db reads" if not suffix else f"the database's {suffix[1:]} file ({taken.name})"
            raise _fail(command, f"--out {path}: that is {what}; the export would replace it: write it to "
                                 "another file, e.g. log.dsjson")


def open_store(db: str | Path) -> Store:
    """The service database at `db` (a SQLite file, which must exist: evaluation never creates one, or a
    PostgreSQL URL, connected to once here so that a server that cannot be reached, a wrong password or database
    name is an error saying so, not a reader's timeout), once it is known to be a bandit-router database (it
    records a schema version) of a schema this code knows (not newer: `StoreError` naming both versions)."""
    try:
        location = parse_database(str(db))
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    if not isinstance(location, DatabaseURL) and not location.is_file():
        raise StoreError(f"no database at {location}")
    store = open_location(location)
    try:
        probe = getattr(store, "probe", None)  # PostgresStore's: one connection, the driver's reason if it fails
        if probe is not None:
            probe()
        version = store.schema_version()
    except BaseException:
        store.close()
        raise
    if version == 0:
        store.close()
        raise StoreError(f"{location} is not a bandit-router database (it records no bandit-router schema: empty, or "
                         "another application's); expected the database that `bandit-router serve` writes (its `db` "
                         "setting)")
    if version > SCHEMA_VERSION:  # its tables may mean what this code does not know: read nothing, change nothing
        store.close()
        raise StoreError(f"{location} has schema version {version}; this bandit-router knows {SCHEMA_VERSION}: read "
                         "it with the newer bandit-router that migrated it")
    return store


def _catalog(config: Path | None) -> list[ModelSpec]:
    """The catalog of the service's settings, read as the service's start reads them (`stored_models`: the
    models added and retired at run time count, which `store_log.model_specs` reads from the database)."""
    return list(load_settings(config, stored_models=True).load_catalog())


def _unlisted(records: list[LoggedRecord], specs: Mapping[str, ModelSpec]) -> list[str]:
    """The models of the log the catalog read has no entry for: without `--config`, their likely cause is that the
    service ran with a catalog of its own, not models removed since or pinned by a client (what the library's
    messages guess, `removed.without_guessed_cause`)."""
    return sorted({m for r in records for m in r.decision.models} - set(specs))


def _shadow_hint(records: list[LoggedRecord], shadow: str) -> str:
    """Which live policies' decisions (with feedback) all logged `shadow`'s pmf: `--policy` evaluates it on those (a
    shadow added at a restart, or the policy live before a promotion, was logged with the later decisions only)."""
    counts: dict[str, list[int]] = {}
    for record in records:
        seen = counts.setdefault(record.decision.policy, [0, 0])
        seen[0] += 1
        seen[1] += shadow in record.shadow_pmfs
    whole = [name for name, (n, logged) in counts.items() if n == logged]
    return f" (--policy {whole[-1]} evaluates it on that live policy's decisions, which all logged it)" if whole else ""


def _noting_models(records: Iterator[LoggedRecord], seen: set[str], *, unlabeled: bool) -> Iterator[LoggedRecord]:
    """`records` as they come, the models of each decision `export` writes (with feedback, or `unlabeled`) added to
    `seen` (`export` streams the log)."""
    for record in records:
        if record.outcome is not None or unlabeled:
            seen.update(record.decision.models)
        yield record


def _scope_words(scope: Scope) -> str:
    """The scope, as `evaluate`'s first line says it: one live policy's decisions "alone", or the whole scope."""
    if scope.policy_only:
        return "" if scope.policy is None else f"; live policy {scope.policy!r} alone"
    return f"; those in the scope: {scope.describe()}"


def _unlisted_models(names: list[str]) -> str:
    return (f"{', '.join(names)}: {'a model' if len(names) == 1 else 'models'} of the log without an entry in "
            "the catalog read without --config (that of $BANDIT_ROUTER_CONFIG or ./bandit-router.toml, else the "
            "shipped one); if the service ran with a catalog of its own, give its settings: --config FILE")


def evaluate(
    ctx: typer.Context,
    db: Annotated[str, typer.Option("--db", help="The service's SQLite file or postgresql:// URL.")],
    candidates: Annotated[
        list[str] | None,
        typer.Option("--candidates", "-C", help="Candidate policy (repeatable; more may follow as arguments)."),
    ] = None,
    more: Annotated[list[str] | None, typer.Argument(help="More candidates.", show_default=False)] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write evaluation.json, evaluation.md, evaluation.png here.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="The service's TOML settings (for its model catalog).")
    ] = None,
    estimators: Annotated[
        str, typer.Option(help="Comma-separated estimators: ips, clipped-ips, snips, dm, dr.")
    ] = "ips,clipped-ips,snips,dm,dr",
    mode: Annotated[str, typer.Option(help="How replayed policies learn: learning, frozen or replay.")] = "learning",
    reward_lambda: Annotated[
        str, typer.Option(help="λ of the reward: 'logged' (each request's own), 'candidate', or a number.")
    ] = "logged",
    baselines: Annotated[bool, typer.Option(help="Also report logged, random and fixed:<model>.")] = True,
    confidence: Annotated[float, typer.Option(help="Confidence level of the intervals.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the replays, bootstraps and cross-fitting.")] = 0,
    policy: Annotated[
        str | None, typer.Option(help="Evaluate on the decisions this live policy made (its name in `/v1/stats` "
                                      "`policy`); every decision still teaches the candidates.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Evaluate on the decisions made at or after this time: Unix seconds or ISO "
                                      "8601 (2026-11-20, 2026-11-20T08:30Z; UTC without an offset); every "
                                      "decision still teaches the candidates.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Evaluate on the decisions made before this time (as --since).")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Evaluate on this tenant's decisions (the context's `tenant`); every decision "
                                      "still teaches the candidates.")
    ] = None,
    escalations: Annotated[
        bool, typer.Option(help="Evaluate escalation rules on the learned cascades' chains instead.")
    ] = False,
) -> None:
    from .evaluate import evaluate_log
    from .report import format_best, format_table, write_evaluation

    specs_given = [*(candidates or []), *(more or [])]
    if escalations:
        _refuse_with_escalations("evaluate", ctx, ESCALATIONS_IGNORE["evaluate"])
        _evaluate_escalations(db, specs_given, confidence, out)
        return
    lam: float | str = reward_lambda
    if reward_lambda not in ("logged", "candidate"):
        try:
            lam = float(reward_lambda)
        except ValueError:
            message = f"--reward-lambda: expected logged, candidate or a number, not {reward_lambda!r}"
            raise _fail("evaluate", message) from None
    try:
        start = None if since is None else parse_time(since, "--since")
        end = None if until is None else parse_time(until, "--until")
        scope = Scope(policy, start, end, tenant)
    except InvalidInput as exc:
        raise _fail("evaluate", str(exc).replace("tenant must", "--tenant must")) from None
    if out is not None:
        _check_out("evaluate", out)  # before the replays, not after them
    unlisted: list[str] = []  # without --config: the log's models the catalog read lacks
    try:
        catalog = _catalog(config)
        store = open_store(db)
        try:
            records, without_feedback = with_feedback(store)
            specs = model_specs(store, catalog)
            retired = retired_models(store, catalog)
        finally:
            store.close()
        if not records:
            message = f"{redact_urls(db)} holds no decision with learned feedback: nothing to evaluate"
            raise _fail("evaluate", message, 1)
        if config is None:
            unlisted = _unlisted(records, specs)
        # with a scope (--policy, --since, --until, --tenant), a shadow need only be logged with the decisions in it
        shadows, partial = shadow_names(r for r in records if scope.holds(r))
        for name in partial:
            typer.echo(f"warning: shadow {name!r} was not logged with every decision"
                       f"{'' if scope.everything else ' in the scope'}; not evaluated"
                       f"{_shadow_hint(records, name) if scope.everything else ''}", err=True)
        specs_given += [f"shadow:{name}" for name in shadows if f"shadow:{name}" not in specs_given]
        evaluation = evaluate_log(
            records,
            specs_given,
            models=specs,
            retired=retired,
            without_feedback=without_feedback,
            estimators=[e.strip() for e in estimators.split(",") if e.strip()],
            mode=mode,
            baselines=baselines,
            reward_lambda=lam,
            confidence=confidence,
            seed=seed,
            policy=scope.policy,
            since=scope.since,
            until=scope.until,
            tenant=scope.tenant,
        )
    except CatalogLacksModels as exc:
        if not unlisted or not set(exc.models) <= set(unlisted):
            raise _fail("evaluate", str(exc)) from None
        # their cause is likely the catalog read, not one the message guesses (removed since, a client named them)
        raise _fail("evaluate", f"{without_guessed_cause(str(exc))}\nhint: {_unlisted_models(unlisted)}") from None
    except (ConfigError, StoreError, BanditRouterError) as exc:  # a typo, a bad value: --config cures none of them
        raise _fail("evaluate", str(exc)) from None
    typer.echo(
        f"{evaluation.n_evaluated} decision{'' if evaluation.n_evaluated == 1 else 's'} with feedback evaluated "
        f"({evaluation.n_logged} logged{_scope_words(scope)}), "
        f"models: {', '.join(evaluation.models)}"
    )
    typer.echo(format_table(evaluation))
    typer.echo(format_best(evaluation))
    warnings = [without_guessed_cause(w) for w in evaluation.warnings] if unlisted else list(evaluation.warnings)
    for warning in [*warnings, *([_unlisted_models(unlisted)] if unlisted else [])]:
        typer.echo(f"warning: {warning}", err=True)
    poor = sorted({r.candidate for r in evaluation.records if r.warnings})
    if poor:
        typer.echo(f"warning: overlap too poor to trust the estimates of: {', '.join(poor)} (⚠ in the table)", err=True)
    if out is not None:
        try:
            with writing(out):
                write_evaluation(out, evaluation)
        except OSError as exc:
            raise _fail("evaluate", f"--out {out}: {exc.strerror or exc}") from None
        typer.echo(f"wrote {out / 'evaluation.json'}, {out / 'evaluation.md'}, {out / 'evaluation.png'}")


def export(
    ctx: typer.Context,
    db: Annotated[str, typer.Option("--db", help="The service's SQLite file or postgresql:// URL.")],
    format: Annotated[str, typer.Option("--format", help="Output format (dsjson).")] = "dsjson",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file (default, or `-`: standard output).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="The service's TOML settings (for its model catalog).")
    ] = None,
    label: Annotated[str, typer.Option(help="What the cost label is: reward or quality.")] = "reward",
    include_unlabeled: Annotated[bool, typer.Option(help="Also export decisions without feedback.")] = False,
    escalations: Annotated[
        bool, typer.Option(help="Export the learned cascades' accept/escalate steps (with their propensities).")
    ] = False,
) -> None:
    from .dsjson import LABELS, export_dsjson

    if escalations:
        _refuse_with_escalations("export", ctx, ESCALATIONS_IGNORE["export"])
    if out is not None and str(out) == "-":  # the usual name of standard output; it made a file named `-`
        out = None
    if format != "dsjson":
        raise _fail("export", f"--format: only 'dsjson' is supported, not {format!r}")
    if label not in LABELS:  # before `--out` is opened: a file that was there keeps what it held
        raise _fail("export", f"--label: expected reward or quality, not {label!r}")
    if out is not None:
        _check_out_file("export", out)
        _check_out_not_database("export", out, db)
    if escalations:
        _export_escalations(db, out, label)
        return
    try:
        catalog = _catalog(config)
        store = open_store(db)
        try:
            specs = model_specs(store, catalog)
            seen: set[str] = set()
            records = _noting_models(iter_log(store), seen, unlabeled=include_unlabeled)
            if out is None:
                try:
                    written = export_dsjson(
                        records, sys.stdout, specs=specs, label=label, include_unlabeled=include_unlabeled
                    )
                    sys.stdout.flush()
                except BrokenPipeError:  # `export | head`: the reader has what it wanted; end quietly
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
                    raise typer.Exit(0) from None
            else:
                with writing_file(out) as fp:
                    written = export_dsjson(records, fp, specs=specs, label=label, include_unlabeled=include_unlabeled)
        finally:
            store.close()
    except (ConfigError, StoreError, BanditRouterError, OSError) as exc:
        raise _fail("export", str(exc)) from None
    unlisted = sorted(seen - set(specs))
    if unlisted and config is None:  # their actions are exported with their name alone: no tags, no price
        typer.echo(f"warning: {_unlisted_models(unlisted)}", err=True)
    elif unlisted:
        one = len(unlisted) == 1
        typer.echo(f"warning: {', '.join(unlisted)}: {'a model' if one else 'models'} of the log without an entry in "
                   f"the catalog of --config (removed from the catalog since?): {'its' if one else 'their'} actions "
                   "are exported with their name alone, without tags or price", err=True)
    if out is not None:
        typer.echo(f"wrote {written} event{'' if written == 1 else 's'} to {out}", err=True)


DEFAULT_RULES = ("logged", "accept", "escalate", *(f"threshold:{t / 10:g}" for t in range(1, 10)))


def _evaluate_escalations(db: str, rules: list[str], confidence: float, out: Path | None) -> None:
    import json

    from .escalations import evaluate_escalations, format_rule_estimates, iter_chains

    skipped: list[ChainFeedback] = []
    if out is not None:
        _check_out("evaluate", out)
    try:
        store = open_store(db)
        try:
            chains = list(iter_chains(store, skipped=skipped))
        finally:
            store.close()
        _warn_skipped(skipped)
        if not chains:
            raise _fail("evaluate", f"{redact_urls(db)} holds no learned chain with feedback: nothing to evaluate", 1)
        results = evaluate_escalations(chains, rules or list(DEFAULT_RULES), confidence=confidence)
    except (StoreError, BanditRouterError) as exc:
        raise _fail("evaluate", str(exc)) from None
    typer.echo(f"{len(chains)} learned chain{'' if len(chains) == 1 else 's'} evaluated (reward per request: final "
               "quality − λ·chain cost)")
    typer.echo(format_rule_estimates(results))
    if out is not None:
        try:
            with writing(out):
                (out / "escalations.json").write_text(json.dumps([r.to_json() for r in results], indent=1))
        except OSError as exc:
            raise _fail("evaluate", f"--out {out}: {exc.strerror or exc}") from None
        typer.echo(f"wrote {out / 'escalations.json'}")


def _warn_skipped(skipped: list[ChainFeedback]) -> None:
    if skipped:
        seqs = ", ".join(str(item.record.seq) for item in skipped[:5]) + (", …" if len(skipped) > 5 else "")
        chains = "stored chain does not" if len(skipped) == 1 else "stored chains do not"
        typer.echo(f"warning: {len(skipped)} {chains} decode (feedback seq {seqs}); left out, as the escalation "
                   "learners leave them out", err=True)


def _export_escalations(db: str, out: Path | None, label: str) -> None:
    from .escalations import export_escalations

    skipped: list[ChainFeedback] = []  # `export` checked `out`
    try:
        store = open_store(db)
        try:
            if out is None:
                try:
                    export_escalations(store, sys.stdout, label=label, skipped=skipped)
                    sys.stdout.flush()
                    _warn_skipped(skipped)
                except BrokenPipeError:
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                    raise typer.Exit(0) from None
                return
            with writing_file(out) as fp:
                written = export_escalations(store, fp, label=label, skipped=skipped)
        finally:
            store.close()
    except (StoreError, BanditRouterError, OSError) as exc:
        raise _fail("export", str(exc)) from None
    _warn_skipped(skipped)
    typer.echo(f"wrote {written} escalation step{'' if written == 1 else 's'} to {out}", err=True)


def register(app: typer.Typer) -> None:
    """Add `evaluate` and `export` to the `bandit-router` command."""
    app.command("evaluate", help=EVALUATE_HELP)(evaluate)
    app.command("export", help=EXPORT_HELP)(export)
