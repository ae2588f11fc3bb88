"""The integration tests use the session's one real `ragtune serve` (`server`, in
tests/conftest.py, shared with the console's browser tests in tests/e2e)."""
