"""Benchmarks (`pytest benchmarks --benchmark-only`); a package so its helpers import as `benchmarks._support`."""
