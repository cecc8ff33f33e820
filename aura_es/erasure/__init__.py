"""Erasing a data subject (crypto-shredding) and proving nothing of theirs is left.

``erase.erase(app, subject, reason)`` deletes the subject's data key and records the
erasure as an event; ``verify.verify(...)`` searches every table and the stream for what
the erasure's proof fingerprints; after a restore, ``reapply.reapply(app,
erasures_on_stream(...))`` erases again every subject the stream recorded.
docs/erasure.md.
"""

from aura_es.erasure.erase import Erasure, UnknownSubject, erase
from aura_es.erasure.reapply import Reapplied, erasures_on_stream, reapply
from aura_es.erasure.verify import NotErased, Verification, verify

__all__ = ["Erasure", "NotErased", "Reapplied", "UnknownSubject", "Verification", "erase",
           "erasures_on_stream", "reapply", "verify"]
