"""Benchmarks: each prints its numbers and writes them as JSON."""
