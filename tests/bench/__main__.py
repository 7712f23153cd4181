"""`python -m tests.bench`: see tests/bench/bench_run.py."""

from tests.bench.bench_run import main

main()
