"""Fault and bad-input suite (issue 5). A package, so that its conftest.py is imported as
`faults.conftest` and the top-level `conftest` that other test modules import stays tests/conftest.py."""
