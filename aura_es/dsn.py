"""Database and NATS URLs: parsing, validation, and display without secrets.

Every libpq parameter a user gives (``sslmode``, ``sslrootcert``, ``options``, …) reaches
the connection unchanged; a parameter libpq does not know is refused by name. Nothing
that could be a credential is ever displayed: see ``redact``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from aura_es.errors import ConfigurationError

#: libpq parameters whose value is a secret.
SECRET_PARAMETERS = frozenset({
    "password", "sslpassword", "scram_client_key", "scram_server_key", "oauth_client_secret",
})
_NATS_SCHEMES = ("nats", "tls", "ws", "wss")
MASK = "***"

# Secret values seen in URLs this process parsed: masked wherever they turn up later
# (an error message quoting a connection string, a library's log line).
_known_secrets: set[str] = set()


def _libpq_keywords() -> frozenset[str]:
    return frozenset(d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults())


_KEYWORDS = _libpq_keywords()


@dataclass(frozen=True)
class PostgresParams:
    """Every parameter of a database URL, as libpq keywords."""

    params: dict[str, str] = field(default_factory=dict)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or "postgres"

    @property
    def host(self) -> str:
        return self.params.get("host") or "localhost"

    @property
    def port(self) -> str:
        return self.params.get("port") or "5432"

    @property
    def user(self) -> str:
        return self.params.get("user") or "postgres"

    @property
    def password(self) -> str:
        return self.params.get("password") or ""

    def conninfo(self) -> str:
        return make_conninfo(**self.connect_kwargs())

    def connect_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``psycopg.connect`` (defaults filled in)."""
        return {**self.params, "dbname": self.dbname, "host": self.host, "port": self.port,
                "user": self.user}


def register_secret(value: str | None) -> None:
    if value and len(value) >= 4:  # a one-letter "secret" would mask half of every line
        _known_secrets.add(value)


# scheme://user:password@  and  scheme://token@ (NATS): the credential part.
# The scheme's length is bounded: unbounded, a long run of letters costs quadratic time.
_URL_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,20})://(?P<userinfo>[^/?#\s@]{0,2048})@"
)
# key=value pairs in query strings and conninfo strings, quoted or not.
_SECRET_PAIR = re.compile(
    r"(?P<key>\b(?:" + "|".join(sorted(SECRET_PARAMETERS)) + r"|token|pass|secret)\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|\"[^\"]*\"?|[^\s&;,]+)",
    re.IGNORECASE,
)


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group("scheme"), match.group("userinfo")
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{scheme}://{user}:{MASK}@"
    if scheme.lower() in _NATS_SCHEMES:
        return f"{scheme}://{MASK}@"  # nats://TOKEN@host: the whole userinfo is the token
    return match.group(0)


def redact(text: str) -> str:
    """``text`` with every credential masked: URL passwords and NATS tokens, secret
    ``key=value`` pairs (query strings, conninfo strings), and any secret value a URL
    parsed earlier in this process carried, wherever it appears."""
    if not text:
        return text
    masked = _URL_USERINFO.sub(_mask_userinfo, text) if "://" in text else text
    if "=" in masked:
        masked = _SECRET_PAIR.sub(lambda m: m.group("key") + MASK, masked)
    for secret in sorted(_known_secrets, key=len, reverse=True):
        if secret in masked:
            masked = masked.replace(secret, MASK)
    return masked


def _first_words(message: str) -> str:
    """A library's parse error up to the first quote: the quoted part may be a password."""
    text = (message.strip().splitlines() or [""])[0]
    return re.split(r"[\"':]", text, maxsplit=1)[0].strip() or "cannot be parsed"


def parse_database_url(url: str) -> PostgresParams:
    """A ``postgresql://`` URL or a ``key=value`` conninfo string, every parameter kept."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("database URL is empty (set AURA_ES_DATABASE_URL)")
    if "\x00" in url:
        raise ConfigurationError("database URL contains a NUL character")
    _remember_secrets(url)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        if scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(
                f"database URL {redact(url)!r} must start with postgresql://"
                f" (got {scheme or 'no'} scheme)"
            )
    for name in _parameter_names(url):
        if name not in _KEYWORDS:
            raise ConfigurationError(
                f"database URL {redact(url)!r} has an unknown parameter {name!r}"
            )
    try:
        parsed = conninfo_to_dict(url)
    except Exception as e:
        raise ConfigurationError(
            f"database URL {redact(url)!r} is malformed: {_first_words(str(e))}"
        ) from None
    params = {k: str(v) for k, v in parsed.items() if v is not None}
    unknown = sorted(set(params) - _KEYWORDS)
    if unknown:
        raise ConfigurationError(
            f"database URL {redact(url)!r} has an unknown parameter {unknown[0]!r}"
        )
    for key in SECRET_PARAMETERS & set(params):
        register_secret(params[key])
    port = params.get("port") or "5432"
    ports = port.split(",")
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in ports):
        raise ConfigurationError(f"database URL {redact(url)!r} has an invalid port {port!r}")
    return PostgresParams(params)


def _parameter_names(url: str) -> list[str]:
    """The parameter names a URL's query string or a conninfo string gives."""
    if "://" in url:
        query = url.split("?", 1)[1].split("#", 1)[0] if "?" in url else ""
        return [unquote(pair.partition("=")[0]) for pair in query.split("&") if pair]
    unquoted = re.sub(r"'(?:[^'\\]|\\.)*'", "''", url)  # a quoted value may hold "x=y"
    return re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)\s*=", unquoted)


def _remember_secrets(url: str) -> None:
    """Secrets as typed (percent-escaped or not), before anything can fail and quote them."""
    for match in _URL_USERINFO.finditer(url):
        userinfo = match.group("userinfo")
        _, colon, secret = userinfo.partition(":")
        if not colon and match.group("scheme").lower() in _NATS_SCHEMES:
            secret = userinfo
        register_secret(secret)
        register_secret(unquote(secret))
    for match in _SECRET_PAIR.finditer(url):
        value = match.group("value").strip("'\"")
        register_secret(value)
        register_secret(unquote(value))


def nats_servers(url: str) -> list[str]:
    """A NATS URL, or a comma-separated list of them, as the list nats-py takes;
    every entry checked, the first bad one named (without its credentials)."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("NATS URL is empty (set AURA_ES_NATS_URL)")
    _remember_secrets(url)
    servers: list[str] = []
    for position, one in enumerate(url.split(","), start=1):
        entry = one.strip()
        where = f" (entry {position} of the list)" if "," in url else ""
        try:
            parsed = urlsplit(entry)
            port = parsed.port  # raises ValueError on a bad port
            host = parsed.hostname
        except ValueError:
            raise ConfigurationError(
                f"NATS URL {redact(entry)!r}{where} has an invalid host or port"
            ) from None
        if parsed.scheme not in _NATS_SCHEMES or not host:
            raise ConfigurationError(
                f"NATS URL {redact(entry)!r}{where} must look like nats://host:port"
            )
        if port == 0:
            raise ConfigurationError(f"NATS URL {redact(entry)!r}{where} has an invalid port")
        servers.append(entry)
    return servers


def check_nats_url(url: str) -> str:
    nats_servers(url)
    return url
