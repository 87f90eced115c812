"""Benchmarks measured side by side in one run: ``python -m benchmarks.run [--quick] --json OUT.json``."""
