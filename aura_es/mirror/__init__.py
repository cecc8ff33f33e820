"""The mirror: every stored event, in global order, exactly once, on a JetStream stream."""
