"""Benchmark scripts; run each as ``python benchmarks/NAME.py``. A package so they can share ``benchmarks.stats``."""
