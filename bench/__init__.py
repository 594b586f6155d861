"""Benchmarks of the hutong gateway against hand-written baselines (see bench/README.md)."""
