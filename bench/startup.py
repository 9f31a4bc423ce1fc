"""How long the default model takes to start, first (dequantising the GGUF) and second (from the cache).

Run from the repository root: `python -m bench.startup [--quick] [--json PATH]`.
Each start is a fresh Python process, as a user or a server restart sees it; it
reports the import of the engine (torch and transformers, mostly) and the model load
separately. --quick skips the cold start (which deletes and rebuilds the cache).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

from bench.common import parser, print_table, write_json
from longshap.hierarchy.models import DEFAULT_MODEL, cache_root

CHILD = """
import json, time
started = time.perf_counter()
from longshap.hierarchy import Explainer
imported = time.perf_counter()
Explainer.from_pretrained(engine="transformers")
print(json.dumps({"import": imported - started, "load": time.perf_counter() - imported}))
"""


def timed_start() -> dict[str, float]:
    """Seconds spent importing and loading in a fresh process, and their sum."""
    output = subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True, text=True).stdout
    times = json.loads(output.strip().splitlines()[-1])
    return {**times, "total": times["import"] + times["load"]}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rows, figures = [], {}
    if not args.quick:
        shutil.rmtree(cache_root() / DEFAULT_MODEL, ignore_errors=True)
        first = timed_start()
        figures.update({f"first_{k}_s": v for k, v in first.items()})
        rows.append(["first (GGUF → cache)", first["import"], first["load"], first["total"]])
    timed_start()  # make sure the cache exists and the OS file cache is warm, as on a server restart
    warm = sorted((timed_start() for _ in range(3)), key=lambda t: t["total"])[1]
    figures.update({f"second_{k}_s": v for k, v in warm.items()})
    rows.append(["second (cached), median of 3", warm["import"], warm["load"], warm["total"]])
    print_table(["start", "import s", "model load s", "total s"], rows, f"start-up of {DEFAULT_MODEL} in a fresh process")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
