"""Shared timing for the benchmark scripts (run as `python benchmarks/<name>.py`, so importable as `timing`)."""

import statistics
import time

import jax


def best_time(fn, repeats: int) -> tuple[float, object]:
    """(best wall seconds over `repeats` calls, last result), after one untimed call that compiles.
    Results are waited for, so asynchronous dispatch does not hide device time."""
    jax.block_until_ready(fn())
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times), out


def best_ms(fn, repeats: int = 10) -> float:
    return 1000 * best_time(fn, repeats)[0]


def median_seconds(fn, args, repeats: int) -> float:
    """Median wall seconds of `repeats` calls of fn(*args), after one untimed call that compiles."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)
