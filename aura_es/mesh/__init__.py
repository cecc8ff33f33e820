"""The consumer kit for services on the mesh: read the JetStream stream aura-es mirrors,
validated against the schema registry, upcast to the version the service was built for,
and applied to the service's own PostgreSQL tables exactly once. docs/mesh.md."""

from aura_es.mesh.consumer import Delivery, MeshConsumer, Subscription
from aura_es.store.keyring import Keyring

__all__ = ["Delivery", "Keyring", "MeshConsumer", "Subscription"]
