"""Erasing a data subject (crypto-shredding) and proving nothing of theirs is left.

``erase.erase(app, subject, reason)`` deletes the subject's data key and records the
erasure as an event; ``verify.verify(...)`` searches every table and the stream for what
the erasure's proof fingerprints. docs/erasure.md.
"""

from aura_es.erasure.erase import Erasure, UnknownSubject, erase
from aura_es.erasure.verify import NotErased, Verification, verify

__all__ = ["Erasure", "NotErased", "UnknownSubject", "Verification", "erase", "verify"]
