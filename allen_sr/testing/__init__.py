"""Helpers for tests and benchmarks: real few-step training runs on synthetic images."""
