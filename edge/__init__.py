"""leafgate: a NATS server for the edge (the ``edge`` package is the server itself)."""

# The one place the version is written; pyproject.toml reads it from here.
# (A constant, not importlib.metadata: that import alone costs ~30 ms of start-up.)
__version__ = "0.1.0"
