"""Live sessions on a Ray cluster: the worker side of `livesum serve --ray` (docs/scale.md)."""
