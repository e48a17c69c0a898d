"""Helpers shared by tests and benchmarks (real services started for the test run)."""
