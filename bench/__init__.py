"""Benchmarks (not tests): each ``bench/bench_<name>.py`` has a ``main()`` that prints a table."""
