"""The ``Idempotency-Key`` header's value: an RFC 8941 structured-field String.

    Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"

A String is double-quoted printable ASCII, where ``\\"`` and ``\\\\`` are the only escapes.
Anything else (no quotes, a control character, non-ASCII, a parameter) is refused with
the reason, which the middleware sends back with status 400.
"""

from __future__ import annotations

from aura_es.store.idempotency import MAX_KEY_LENGTH, is_blank


class InvalidKeyHeader(ValueError):
    """The header is not a structured-field String, or not a usable key."""


def parse_key(raw: str) -> str:
    value = raw.strip(" ")
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise InvalidKeyHeader(
            'Idempotency-Key must be a quoted string, e.g. "8e03978e-40d5-43e8"')
    out: list[str] = []
    escaped = False
    for char in value[1:-1]:
        if escaped:
            if char not in '"\\':
                raise InvalidKeyHeader(f"Idempotency-Key has an invalid escape \\{char}")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            raise InvalidKeyHeader("Idempotency-Key has a quote inside the string")
        elif not 0x20 <= ord(char) <= 0x7E:
            raise InvalidKeyHeader(
                "Idempotency-Key may hold only printable ASCII characters")
        else:
            out.append(char)
    if escaped:
        raise InvalidKeyHeader("Idempotency-Key ends inside an escape")
    key = "".join(out)
    if is_blank(key):
        raise InvalidKeyHeader("Idempotency-Key is empty or only whitespace")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyHeader(
            f"Idempotency-Key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    return key
