"""Database URLs for team mode, and how to show one without its password.

A libpq connection URI (https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING-URIS)
may carry the password after the user name (`postgresql://user:pw@host/db`) or as a query parameter
(`?password=pw`); either is a secret. `shown()` is the only form that reaches logs, errors, `status`
or /health; `passwords()` are what callers scrub from any text a driver produced.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")
HIDDEN = "***"


def is_postgres_url(value: str) -> bool:
    return value.split("://", 1)[0].lower() in POSTGRES_SCHEMES and "://" in value


def passwords(url: str) -> list[str]:
    """The password(s) written in the URL (userinfo or `password=` parameter), as written and decoded."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        for pair in parts.query.split("&"):
            key, _, value = pair.partition("=")
            if key == "password" and value:
                found += [value, unquote(value)]
        found += [v for k, v in parse_qsl(parts.query) if k == "password" and v]
    except ValueError:
        pass
    return sorted(set(found), key=len, reverse=True)


def shown(url: str) -> str:
    """The URL with any password replaced by `***` (the user, host, port and database stay)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hostinfo = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":" + HIDDEN
            netloc = f"{userinfo}@{hostinfo}"
        query = "&".join(
            f"password={HIDDEN}" if pair.partition("=")[0] == "password" else pair
            for pair in parts.query.split("&") if pair
        )
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    except ValueError:
        return f"{url.split('://', 1)[0]}://{HIDDEN}"  # unparseable: show nothing that could be the password
