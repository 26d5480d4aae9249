"""Errors of the store (importable without loading sqlite3)."""


class StoreOpenError(Exception):
    """The store cannot be opened or created at all (permissions, no space...)."""
