"""The PostgreSQL store's URL: a libpq connection URI whose query may also hold the
store's own options (schema, pool sizes and limits, synchronous_commit); everything
else is passed to libpq as given."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from hitl_core.adapter import ValidationError

__all__ = ["SCHEMES", "Config", "parse_url"]

SCHEMES = ("postgresql", "postgres")
SYNCHRONOUS_COMMIT = ("on", "off", "local", "remote_write", "remote_apply")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# libpq settings the store sets when the URL does not: a bounded wait for a server that
# does not answer, TCP keepalives that notice a dead peer in about two minutes instead
# of the operating system's two hours, and a name that shows in pg_stat_activity.
LIBPQ_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "60",
    "keepalives_interval": "10",
    "keepalives_count": "6",
    "application_name": "hitl-core",
}


@attrs.frozen(kw_only=True)
class Config:
    """What `parse_url` read: the libpq connection string and the store's options."""

    conninfo: str = attrs.field(repr=False)  # holds the password
    target: str
    """host:port/dbname, for messages (never the password)."""
    schema: str = "hitl"
    pool_min_size: int = 1
    pool_max_size: int = 10
    pool_timeout: float = 10.0
    pool_max_lifetime: float = 1800.0
    pool_max_idle: float = 300.0
    synchronous_commit: str | None = None


def _bad(url: str, why: str) -> ValidationError:
    return ValidationError("invalid_url", f"{why} (in {_hide_password(url)!r})")


def _hide_password(url: str) -> str:
    """The URL with its password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unreadable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _number(url: str, key: str, value: str, *, integer: bool, low: float) -> Any:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        raise _bad(url, f"{key} must be a number; got {value!r}") from None
    if not number >= low or number != number or number == float("inf"):
        raise _bad(url, f"{key} must be at least {low}; got {value!r}")
    return number


def parse_url(url: str) -> Config:
    """Read a `postgresql://` or `postgres://` URL. The store's own query options are:

    - `schema` (default `hitl`): the schema that holds every table of the store;
    - `pool_min_size` (1), `pool_max_size` (10): connections kept open / at most;
    - `pool_timeout` (10 s): how long a call waits for a free connection;
    - `pool_max_lifetime` (1800 s), `pool_max_idle` (300 s): when connections are renewed;
    - `synchronous_commit`: set on every connection (default: the server's, made `on`
      if the server says `off`).

    Every other option goes to libpq (`sslmode`, `connect_timeout`, ...), which refuses
    the ones it does not know."""
    if not isinstance(url, str) or url.split("://", 1)[0] not in SCHEMES or "://" not in url:
        raise ValidationError(
            "invalid_url",
            "a PostgreSQL store URL looks like 'postgresql://user:password@host:5432/dbname'",
        )
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as error:
        raise _bad(url, f"cannot read the URL: {error}") from None
    options: dict[str, Any] = {}
    passed: list[tuple[str, str]] = []
    for key, value in pairs:
        if key == "schema":
            if not _SCHEMA.fullmatch(value) or value.startswith("pg_"):
                raise _bad(
                    url,
                    "schema must be a lower-case name of letters, digits and _ "
                    f"(not starting with pg_); got {value!r}",
                )
            options["schema"] = value
        elif key in ("pool_min_size", "pool_max_size"):
            options[key] = _number(url, key, value, integer=True, low=0 if "min" in key else 1)
        elif key in ("pool_timeout", "pool_max_lifetime", "pool_max_idle"):
            options[key] = _number(url, key, value, integer=False, low=0.1)
        elif key == "synchronous_commit":
            if value not in SYNCHRONOUS_COMMIT:
                raise _bad(
                    url, f"synchronous_commit must be one of {', '.join(SYNCHRONOUS_COMMIT)}"
                )
            options[key] = value
        else:
            passed.append((key, value))
    if options.get("pool_min_size", 1) > options.get("pool_max_size", 10):
        raise _bad(url, "pool_min_size is larger than pool_max_size")
    libpq_url = urlunsplit(parts._replace(query=urlencode(passed)))
    try:
        params = conninfo_to_dict(libpq_url)
    except psycopg.Error as error:
        raise _bad(url, f"libpq cannot read it: {str(error).strip()}") from None
    for given in str(params.get("port") or "5432").split(","):
        if not given.isdigit() or not 0 < int(given) < 65536:
            raise _bad(url, f"the port must be a number from 1 to 65535; got {given!r}")
    for key, value in LIBPQ_DEFAULTS.items():
        params.setdefault(key, value)
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    target = f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"
    conninfo = make_conninfo("", **{key: str(value) for key, value in params.items()})
    return Config(conninfo=conninfo, target=target, **options)
