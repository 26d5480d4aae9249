"""Authentication, authorization and accounts: pure logic (no I/O)."""
