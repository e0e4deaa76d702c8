"""Benchmarks and peer baselines: what the experiments/bench_*.py scripts run. Not part of
the installed packages (a user imports hoststore and jaxstream, never these)."""
