"""`bandit-router serve`: run the HTTP service with uvicorn (uvloop + httptools, no access log by default), with
connection deadlines and a connection cap (`protocol.py`)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from ..config import KEYS, ConfigError, Settings, load_settings, settings_file
from ..store import StoreError
from ..store.location import Database, DatabaseURL, missing_directory, open_store, parse_database
from ..store.serverlock import ServerLock, claim_database
from . import metricsdir
from .protocol import LIMITS_VARIABLE, Limits

SERVE_HELP = """Serve the routing API (POST /v1/route, POST /v1/feedback, ...; OpenAPI at /docs).

Settings come from --config FILE (or $BANDIT_ROUTER_CONFIG, or ./bandit-router.toml), then from \
BANDIT_ROUTER_* environment variables, then from these options.

With no settings at all: 127.0.0.1:8000, database ./bandit-router.db, the shipped catalog, the `default` policy.

One `serve` per SQLite file: a second one on a file that a running `serve` uses is refused (exit status 2, \
naming its pid). For more processes on one file use --workers N; for replicas, a postgresql:// URL.
"""



def check_port_free(host: str, port: int, workers: int = 1) -> None:
    """`ConfigError` when uvicorn could not listen on `host:port` now (another server holds it, no interface has
    that address, a port below 1024 without privileges). uvicorn finds that out only after the application has
    started and recovered its state, and then exits with status 3 and its own words; this binds the sockets uvicorn
    would bind, with its options, and closes them at once."""
    import socket

    with contextlib.ExitStack() as probes:
        try:
            for family, address in _listening_addresses(host, port, workers):
                probe = probes.enter_context(socket.socket(family, socket.SOCK_STREAM))
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and workers <= 1:  # as uvloop's create_server (see below)
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except socket.gaierror as exc:
            raise ConfigError(f"host: cannot resolve {host!r}: {exc.strerror}{_host_hint(host)}") from None
        except OSError as exc:
            raise ConfigError(f"port: cannot listen on {host}:{port}: {exc.strerror}{_bind_hint(exc.errno, port)}") \
                from None


def _listening_addresses(host: str, port: int, workers: int) -> list[tuple[int, Any]]:
    """The (family, address) pairs uvicorn listens on: with workers, one socket, IPv6 when `host` has a ':'
    (`uvicorn.Config.bind_socket`, without IPV6_V6ONLY: with the system's default, dual stack on Linux, it takes the
    port on IPv4 too); in one process, every address `host` resolves to, IPv6 ones with IPV6_V6ONLY (uvloop's
    `create_server`, as asyncio's)."""
    import socket

    if workers > 1:
        return [(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))]
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return list(dict.fromkeys((family, address) for family, _, _, _, address in found))


def _host_hint(host: str) -> str:
    """What to give for a `host` that is a URL or carries a port (`http://127.0.0.1`, `127.0.0.1:8000`,
    `[::1]:8000`); a URL's address and port as `urlsplit` reads them (`http://[::1]:8000/v1`: `::1`, 8000)."""
    if "://" not in host and not host.startswith("["):
        address, colon, given_port = host.rpartition(":")
        if colon and given_port.isdigit() and ":" not in address:  # not an IPv6 address
            return f" (the port is an option of its own: --host {address} --port {given_port})"
        return ""
    try:
        parts = urlsplit(host if "://" in host else f"//{host}")
        hostname = parts.hostname
    except ValueError:  # `http://[::1`: no address to suggest
        return ""
    try:
        given = parts.port
    except ValueError:  # not a number, or above 65535
        given = None
    port = f" --port {given}" if given is not None else ""
    if "://" in host:
        return f" (a host name or address, not a URL: --host {hostname or '127.0.0.1'}{port})"
    return f" (the port is an option of its own: --host {hostname}{port})" if hostname and port else ""


def _bind_hint(error: int | None, port: int) -> str:
    """What to do about a failed bind, for the errors a user can fix here."""
    if error == errno.EADDRINUSE:
        return " (another server, a bandit-router serve already running? stop it, or choose another --port)"
    if error == errno.EADDRNOTAVAIL:
        return (" (no network interface of this machine has that address: --host 127.0.0.1 for this machine only, "
                "0.0.0.0 for all of its interfaces)")
    if error == errno.EACCES and port < 1024:
        return " (ports below 1024 need privileges: choose a --port of 1024 or more, e.g. 8000)"
    return ""


def _help(name: str) -> str:
    """An option's help: the setting's own help text and default (`bandit_router.config.sections`)."""
    return f"{KEYS[name].help} (setting `{name}`, default {getattr(Settings(), name)})."


def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML settings file (see the docs: service → configuration).")
    ] = None,
    host: Annotated[str | None, typer.Option(help=_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=_help("port"))] = None,
    db: Annotated[str | None, typer.Option(help=_help("db"))] = None,
    workers: Annotated[int | None, typer.Option(help=_help("workers"))] = None,
    log_level: Annotated[str | None, typer.Option(help=_help("log_level"))] = None,
) -> None:
    overrides: dict[str, Any] = {
        k: v
        for k, v in {"host": host, "port": port, "db": db, "workers": workers, "log_level": log_level}.items()
        if v is not None
    }
    lock: ServerLock | None = None
    metrics = contextlib.ExitStack()
    metrics.enter_context(metricsdir.operators_folder_hidden())  # before prometheus-client is imported
    try:
        settings = load_settings(config, overrides=overrides, stored_models=True)
        from .app import check_live_catalog, check_upstreams

        live = check_live_catalog(settings, warn=False)  # with the models added and retired at run time; before
        # the schema, so that a refused start creates and migrates nothing (what it would warn about, the server's
        # start says); then the judge's and named routers' models, the live catalog's (one added at run time too,
        # or retired: still called): a message now, not a traceback later
        check_upstreams(settings, models=[*live.active, *live.retired])
        if settings.server.workers > 1:  # the workers' metrics folder (refused when its file system has no room:
            # before anything is created): `metricsdir`
            metrics.enter_context(metricsdir.metrics_folder(settings.server.metrics_dir, settings.server.workers))
        storage = settings.storage
        lock = claim_database(storage.db, "serve")  # no other serve on this SQLite file (store/serverlock.py)
        server = settings.server
        check_port_free(server.host, server.port, server.workers)  # before the schema (a refused start creates and
        # migrates nothing) and the state is recovered; after the lock, which names the serve that holds this file
        store = open_store(storage.db, synchronous=storage.synchronous)
        try:
            store.prepare()  # the schema, once, before workers
        finally:
            store.close()
        if lock is not None:
            lock.share()  # held until this process exits; each worker joins it
    except (ConfigError, StoreError) as exc:
        metrics.close()
        if lock is not None:
            lock.close()
        typer.echo(f"bandit-router serve: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        with metrics:
            _run(settings, config, overrides)
    finally:
        if lock is not None:
            lock.close()


def _run(settings: Settings, config: Path | None, overrides: dict[str, Any]) -> None:
    """uvicorn, in this process or with `settings.server.workers` worker processes, until it stops."""
    import uvicorn

    server = settings.server
    from .logs import configure_logging, uvicorn_log_config

    configure_logging(server.log_level)
    if server.host not in ("127.0.0.1", "localhost", "::1") and not settings.auth_enabled:
        logging.getLogger("bandit_router.service").warning(
            "binding %s without API keys: anyone who can reach this port can route and send feedback", server.host
        )
    server = settings.server
    limits = Limits(server.header_timeout_s, server.body_timeout_s, server.max_connections, server.max_header_bytes,
                    server.write_timeout_s)
    os.environ[LIMITS_VARIABLE] = limits.to_environment()  # read by the protocol, in this process and the workers
    common: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "loop": "uvloop",
        "http": "bandit_router.service.protocol:GuardedHttpToolsProtocol",  # httptools + header/body deadlines
        "timeout_keep_alive": settings.server.timeout_keep_alive_s,
        # uvicorn answers 503 once its connections reach this (counting the asking one): the protocol's cap
        # refuses connection max_connections + 1, so every connection it accepts can be served
        "limit_concurrency": settings.server.max_connections + 1,
        "access_log": settings.server.access_log,
        "log_config": uvicorn_log_config(),  # uvicorn's lines with the time in UTC first, as ours
        "log_level": settings.server.log_level,
        "timeout_graceful_shutdown": 10,
        "backlog": 2048,
        "proxy_headers": False,  # bound to loopback by default: trust no X-Forwarded-* header
        "server_header": False,
    }
    if settings.server.workers == 1:
        from .app import create_app, tune_process

        app = create_app(settings)
        tune_process(app)
        uvicorn.run(app, **common)
        return
    from .app import SERVE_ARGS

    hand_off = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}  # `db` stays a str
    os.environ[SERVE_ARGS] = json.dumps({"config": None if config is None else str(config), "overrides": hand_off,
                                         "log_level": server.log_level})
    sys.stdout.flush()
    from uvicorn.config import STARTUP_FAILURE

    from .supervisor import Supervisor

    uvicorn_config = uvicorn.Config("bandit_router.service.app:app_from_environment", factory=True,
                                    workers=server.workers, timeout_worker_healthcheck=server.worker_healthcheck_s,
                                    **common)
    supervisor = Supervisor(uvicorn_config, sockets=[uvicorn_config.bind_socket()])  # as `uvicorn.run` with workers
    supervisor.run()
    if supervisor.failed_to_start:
        # uvicorn stopped every worker because one could not start, and returns as from a SIGTERM: the exit status
        # of one process's failed start (3), not 0, so that a supervisor that restarts on failure does
        raise typer.Exit(STARTUP_FAILURE)


CHECK_HELP = """Check a database file: SQLite's integrity check, the decisions with feedback (do they decode, as a \
replay reads them: the newest 200,000), the model events (added and retired models: a start refuses one that \
does not decode), and every stored checkpoint against its checksum.

Prints what it found and the last good checkpoint (the newest one that reads back and matches its sha256), and \
for each checkpoint that does not (a part missing, its bytes or its checksum altered) what a start restores \
instead. Exit status 0 when the file is intact: all of that is sound; 1 when it is not, a checkpoint failing its \
checksum included (restore a backup: see the docs, service → durability), \
2 when it cannot be opened or is not a bandit-router database (a sound SQLite file with none of its tables: empty, \
or another application's). Read-only; safe while the service runs.

With --config (or without --db) it first checks the settings as `serve` does, against the models the database \
holds (with --db, that database's), and stops with exit status 2 when they are refused; it does not check the \
providers' keys (`serve` refuses a judge or named router's model it cannot call).
"""


def check(
    db: Annotated[str | None, typer.Option(help="Database file (default: the configured `db`).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    from ..dbguard import check_database

    notes: list[str] = []
    try:
        location = _database(config, db, unreadable=notes.append)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"bandit-router check: {exc}", err=True)
        raise typer.Exit(2) from None
    if isinstance(location, DatabaseURL):
        typer.echo(f"bandit-router check: {location} is PostgreSQL; check is for SQLite files (PostgreSQL "
                   "checks its own pages: see its amcheck module)", err=True)
        raise typer.Exit(2)
    db_path = location
    for note in notes:  # the report is why `check` runs: a note, not an exit status 2 in place of it
        typer.echo(f"bandit-router check: {note}", err=True)
    report = check_database(db_path)
    if report.error and not report.counts and not as_json:  # nothing opened (a typo'd path): no verdict on it
        typer.echo(f"bandit-router check: {_not_opened(report.error, db_path, db, settings_file(config))}", err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(f"database: {report.path}")
        if report.error:
            typer.echo(f"error: {report.error}")
        typer.echo("integrity: " + ("ok" if report.integrity == ["ok"] else f"{len(report.integrity)} problem(s)"))
        for line in report.integrity if report.integrity != ["ok"] else []:
            typer.echo(f"  {line}")
        typer.echo("rows: " + ", ".join(f"{k}={'unreadable' if v is None else v}" for k, v in report.counts.items()))
        decoded = report.decisions
        if decoded:
            typer.echo(f"decisions with feedback: {decoded['checked']} of {decoded['with_feedback']} decoded (the "
                       f"newest), {decoded['unreadable']} cannot be read")
            for item in decoded["first_unreadable"]:
                typer.echo(f"  {item['reason']}")
        events = report.model_events
        if events:
            typer.echo(f"model events: {events['checked']} decoded, {len(events['unreadable'])} cannot be read")
            for item in events["unreadable"]:
                typer.echo(f"  {item['reason']}")
        good = report.last_good_checkpoint
        if good is None:
            typer.echo("last good checkpoint: none (a restart relearns from the whole feedback log)")
        else:
            typer.echo(f"last good checkpoint: id {good['id']}, feedback seq {good['seq']}, policy version "
                       f"{good['version']}, taken at {good['created_at']:.0f} (Unix time)")
        bad = [c for c in report.checkpoints if not c.get("good")]
        if bad:
            typer.echo(f"checkpoints failing their checksum: {[c['id'] for c in bad]}")
            for item in bad:
                typer.echo(f"  {_bad_checkpoint(item)}")
        restore = "NOT intact: restore a backup (the docs: service → durability, 'Backups while it runs')"
        if report.integrity == ["ok"] and not report.error and decoded.get("unreadable"):
            restore = ("NOT intact: decisions whose feedback the replay skips: restore a backup, or delete those "
                       "decisions to accept the loss (the docs: service → durability)")
        if report.integrity == ["ok"] and not report.error and events.get("unreadable"):
            restore = ("NOT intact: model events that no start can apply: repair them as said above (the docs: "
                       "service → durability)")
        if report.integrity == ["ok"] and not report.error and bad and not decoded.get("unreadable") \
                and not events.get("unreadable"):
            restore = ("NOT intact: checkpoints failing their checksum (a start skips them: see above): restore a "
                       "backup, or accept that and delete them: DELETE FROM checkpoints WHERE id IN "
                       f"({', '.join(str(c['id']) for c in bad)}) (the docs: service → durability)")
        typer.echo("verdict: " + ("intact" if report.ok else restore))
    if report.error and not report.counts:
        raise typer.Exit(2)
    raise typer.Exit(0 if report.ok else 1)


def _bad_checkpoint(entry: dict[str, Any]) -> str:
    """One checkpoint `check` found bad: why, and what a start that comes to it restores instead."""
    fallback = entry.get("fallback")
    instead = ("none: it replays the whole log" if fallback is None else
               f"checkpoint {fallback['id']} (feedback seq {fallback['seq']}) and replays the log after it")
    line = (f"checkpoint {entry['id']} (feedback seq {entry.get('seq')}): {entry.get('error')}; a start with its "
            f"settings that comes to it restores {instead}")
    lacks = entry.get("lacks_seqs")
    if lacks:
        line += (f", which lacks feedback seqs {lacks[0]}–{lacks[1]} (deleted: retention, or by hand): what they "
                 "taught is lost unless a backup holds a good checkpoint")
    return line


MIGRATE_HELP = """Create or migrate the database's schema to this version's, then exit (`serve` does it too, on start).

Migrations are numbered and recorded in the database; a database whose schema is newer than this \
bandit-router's is refused (exit status 2). Works on a SQLite file and on a postgresql:// URL. With --config \
(or without --db) it first checks the settings as `serve` does (with the models the database holds; with --db, \
that database's), and migrates nothing when they are refused. A SQLite file that a running `serve` uses is \
refused too (exit status 2): stop it first.
"""


def migrate(
    db: Annotated[str | None, typer.Option(help="SQLite file or postgresql:// URL (default: the configured `db`).")]
    = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file.")] = None,
) -> None:
    from ..store import SCHEMA_VERSION

    try:
        location = _database(config, db)  # checked before migrating
        lock = claim_database(location, "migrate")  # not under a running serve (store/serverlock.py)
        try:
            store = open_store(location)
            try:
                store.prepare()
            finally:
                store.close()
        finally:
            if lock is not None:
                lock.close()
    except (ConfigError, StoreError, ValueError) as exc:
        typer.echo(f"bandit-router migrate: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{location}: schema version {SCHEMA_VERSION}")


def _not_opened(error: str, path: Path, db: str | None, source: str | Path | None) -> str:
    """`check`'s line for a database it could not open, `error`: with --db, that alone; with a settings file
    `source` (--config, `$BANDIT_ROUTER_CONFIG` or ./bandit-router.toml), which passed, whether `serve` would create
    the missing file (not its missing directory); with none, where the `db` came from."""
    if db is not None:
        return error
    if source is None:
        return f"{error} (the configured `db`: give the file with --db FILE, or --config FILE)"
    if path.exists():  # a directory, an empty or another application's file: the settings point at it
        return f"{error} (the `db` of the settings of {source}, which are valid; give another file with --db FILE)"
    folder = missing_directory(path)
    if folder is not None:  # `serve` refuses to start there
        return f"{folder}; the other settings of {source} are valid"
    return (f"{error} (the settings of {source} are valid; `serve` creates their `db` on its first start; give an "
            "existing file with --db FILE)")


def _database(config: Path | None, db: str | None, *,
              unreadable: Callable[[str], None] | None = None) -> Database:
    """The database `check` and `migrate` work on: `--db` alone is read as given (no settings); with `--config`, or
    without `--db`, the settings are checked first (`_checked_settings`) and give it."""
    if db is not None and config is None:
        return parse_database(db)
    return _checked_settings(config, db=db, unreadable=unreadable).storage.db


def _checked_settings(config: Path | None, *, db: str | None = None,
                      unreadable: Callable[[str], None] | None = None) -> Settings:
    """The settings as `serve` checks them: the catalog's models against the live catalog (`check_live_catalog`:
    with the models its database holds, added and retired at run time, when it exists; the catalog file alone
    otherwise). `db`: the database given on the command line, in place of the configured one (as `serve --db`
    takes it). `unreadable`: a database that cannot be read is not checked against (`check` says why): the
    catalog file alone is, as `check()` checks it without `stored_models`, and what that refuses is told to
    `unreadable` as a note, not raised (a model the database added at run time, which `serve` would take, is not
    in the file)."""
    from .app import check_live_catalog

    settings = load_settings(config, overrides={} if db is None else {"db": db}, stored_models=True)
    try:
        check_live_catalog(settings)
    except StoreError:
        if unreadable is None:
            raise
        try:
            settings.check_catalog(list(settings.load_catalog()))
        except ConfigError as refused:
            unreadable(f"not checked against the database, which cannot be read (the report says why), but against "
                       f"the catalog file alone, which stops at its first problem (a model it names may have been "
                       f"added by POST /v1/models, which only the database holds): {refused}")
    return settings


def register(app: typer.Typer) -> None:
    """Add `serve`, `check` and `migrate` to the `bandit-router` command."""
    app.command("serve", help=SERVE_HELP)(serve)
    app.command("check", help=CHECK_HELP)(check)
    app.command("migrate", help=MIGRATE_HELP)(migrate)
