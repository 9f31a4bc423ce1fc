"""How long the default model takes to start, first (dequantising the GGUF) and second (from the cache).

Run from the repository root: `python -m bench.startup [--quick] [--json PATH]`.
Each start is a fresh Python process that imports the engine and loads the model,
so the figures include imports, as a user or a server restart sees them. --quick
skips the cold start (which deletes and rebuilds the cache).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

from bench.common import parser, print_table, write_json
from hierarchy.models import DEFAULT_MODEL, cache_root

LOAD = "from hierarchy import Explainer; Explainer.from_pretrained()"


def timed_start() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", LOAD], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rows, figures = [], {}
    if not args.quick:
        shutil.rmtree(cache_root() / DEFAULT_MODEL, ignore_errors=True)
        figures["first_start_s"] = timed_start()
        rows.append(["first (GGUF → cache)", figures["first_start_s"]])
    timed_start()  # make sure the cache exists and the OS file cache is warm, as on a server restart
    warm = sorted(timed_start() for _ in range(3))
    figures["second_start_s"] = warm[1]
    rows.append(["second (cached), median of 3", warm[1]])
    print_table(["start", "seconds"], rows, f"start-up of {DEFAULT_MODEL} in a fresh process")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
