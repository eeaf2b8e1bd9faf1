"""Benchmarks of heat-scheduler (not tests): see bench/README.md."""
