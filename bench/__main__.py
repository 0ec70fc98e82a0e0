"""Run benchmarks: ``python -m bench`` runs all, ``python -m bench session store`` some
(``scale-out`` and ``scale_out`` name the same one)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )


def main(argv: list[str]) -> None:
    names = [name.replace("-", "_") for name in argv] or available()
    unknown = set(names) - set(available())
    if unknown:
        sys.exit(f"unknown benchmark(s) {sorted(unknown)}; available: {available()}")
    for name in names:
        print(f"\n=== bench {name} ===", flush=True)
        importlib.import_module(f"bench.bench_{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
