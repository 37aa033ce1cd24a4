"""Where the store lives: a file path (SQLite, the embedded default) or a `postgresql://` URL (PostgreSQL), and
how a URL is shown without its password.

    >>> url = DatabaseURL("postgresql://router:s3cret@db.internal:5432/routing")
    >>> str(url)
    'postgresql://router:***@db.internal:5432/routing'
    >>> redact_urls("connection to postgresql://router:s3cret@db/x failed")
    'connection to postgresql://router:***@db/x failed'
    >>> parse_database("postgres:/router:s3cret@db/x")  # one slash: refused, not a SQLite file of that name
    Traceback (most recent call last):
    ValueError: a malformed PostgreSQL URL (postgresql://user:password@host/database): 'postgres:/router:***@db/x'
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .interface import Store

SCHEMES = ("postgresql://", "postgres://")
MASK = "***"
_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_MISTYPED_URL = re.compile(r"\s*postgres(?:ql)?:/*", re.IGNORECASE)
"""The start of a PostgreSQL URL whose `//` is mistyped (`postgres:/u:pw@host/db`): not a file path."""


def missing_directory(path: Path) -> str | None:
    """Why a SQLite database at `path` cannot be made there when its directory is missing or not a directory (the
    message), else None. Directories are never created: a typo in a path would make a new tree silently."""
    folder = path.parent
    if folder.is_dir():
        return None
    found = "is not a directory" if folder.exists() else "does not exist"
    return (f"{path}: its directory {folder} {found} (the database file is created on first start, its directory "
            "is not: create it first, or correct the path)")


class DatabaseURL:
    """A PostgreSQL connection URL. `str()` and `repr()` never show the password; `reveal()` gives the URL to the
    driver (and nothing else calls it)."""

    __slots__ = ("_url",)

    def __init__(self, url: str) -> None:
        if not is_url(url):
            raise ValueError(f"not a PostgreSQL URL (postgresql://…): {redact_urls(url)!r}")
        scheme, _, rest = url.strip().partition("://")
        url = scheme.lower() + "://" + rest  # the driver (libpq) reads the scheme in lower case only
        if any(c.isspace() for c in url):  # the driver refuses them, quoting the part: the password too
            raise ValueError("a PostgreSQL URL cannot hold spaces or other blanks: percent-encode them (a space is "
                             "%20)")
        parts = urlsplit(url)
        if parts.netloc.count("@") > 1:  # libpq ends the user info at the first, then quotes the rest as the host
            raise ValueError("a PostgreSQL URL's user name and password cannot hold '@': percent-encode it (%40)")
        if not parts.hostname and "host=" not in (parts.query or ""):
            raise ValueError(f"a PostgreSQL URL needs a host: {redact_urls(url)!r}")
        self._url = url

    def reveal(self) -> str:
        return self._url

    @property
    def password(self) -> str | None:
        return urlsplit(self._url).password

    def __str__(self) -> str:
        return redact_urls(self._url)

    def __repr__(self) -> str:
        return f"DatabaseURL({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DatabaseURL) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)


Database = Path | DatabaseURL
"""The `db` setting's type."""


def is_url(value: str) -> bool:
    """Whether `value` is a PostgreSQL URL: the scheme in any case, blanks around it (a line feed) ignored."""
    return value.strip().lower().startswith(SCHEMES)


def parse_database(value: str | Path | DatabaseURL) -> Database:
    """A `db` value: a `postgresql://` (or `postgres://`) URL, else a SQLite file path."""
    if isinstance(value, DatabaseURL | Path):
        return value
    if is_url(value):
        return DatabaseURL(value)
    if _MISTYPED_URL.match(value):  # taken as a file path, its "directory does not exist" showed the password
        raise ValueError(f"a malformed PostgreSQL URL (postgresql://user:password@host/database): "
                         f"{_masked_malformed(value)!r}")
    return Path(value).expanduser()


def _masked_malformed(value: str) -> str:
    """A mistyped PostgreSQL URL with everything between its user name's `:` and its last `@` masked (all after
    that `:` when it has no `@`), and a `password=` parameter's value: `redact_urls` finds passwords only after
    `://`."""
    start = _MISTYPED_URL.match(value)
    cut = 0 if start is None else start.end()
    info, at, host = value[cut:].rpartition("@")
    if not at:
        info, host = value[cut:], ""
    user, colon, _ = info.partition(":")
    shown = value[:cut] + user + (":" + MASK if colon else "") + at + host
    return _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + MASK, shown)  # and a `password=` in its query


def redact_urls(text: str, secret: str | None = None) -> str:
    """`text` with the password of every PostgreSQL URL, every `password=…` keyword, and `secret` masked."""
    if secret:
        text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    return _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + MASK, text)


def open_store(db: str | Path | DatabaseURL, **sqlite_options: Any) -> Store:
    """The store for `db`: `PostgresStore` for a URL, else `SQLiteStore` (with `sqlite_options`: synchronous,
    wal_max_bytes, …)."""
    location = parse_database(db)
    if isinstance(location, DatabaseURL):
        from .postgres import PostgresStore  # psycopg is imported only when PostgreSQL is used

        return PostgresStore(location)
    from .sqlite import SQLiteStore

    return SQLiteStore(location, **sqlite_options)
