"""What every benchmark shares: --quick/--json flags, a printed table, a flat JSON of figures."""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Sequence

from longshap.hierarchy.results import json_safe


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a small seeded subset (minutes, not hours)")
    p.add_argument("--json", type=Path, help="write a flat object of the figures here")
    p.add_argument("--model", default=None, help="local model directory (default: embedded Gemma 3 270M)")
    return p


def print_table(headers: Sequence[str], rows: Sequence[Sequence], title: str) -> None:
    cells = [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}\n\nMachine: {machine()}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def write_json(path: Path | None, figures: dict) -> None:
    if path is None:
        return
    figures = {"machine": machine(), **figures}
    path.write_text(json.dumps(json_safe(figures), indent=2, sort_keys=True, allow_nan=False))


def machine() -> str:
    """The hardware behind the figures: bfloat16 ran 2.7x faster than float32 on one CPU and 1.5x on another.

    torch is imported here, not at the top, so the NumPy-only benchmarks also run where it is not
    installed (bench.estimators_vs_shapiq runs under Python 3.12 for shapiq >= 1.5, without torch).
    """
    try:
        import torch
    except ImportError:
        return f"{_cpu()}, {os.cpu_count()} cores, no torch, Python {platform.python_version()}"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else _cpu()
    return f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _cpu() -> str:
    """The CPU's model name and which bf16 matrix instructions it has (AMX tiles, AVX512-BF16 dot products)."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in info if ":" in line)}
    name = fields.get("model name", platform.machine())
    flags = fields.get("flags", "").split()
    bf16 = [flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags]
    return f"{name} ({', '.join(bf16) or 'no bf16 matrix instructions'})"


def spearman(first: dict[str, float], second: dict[str, float]) -> float:
    """Spearman correlation of two runs' values of the same units (ties ranked by order)."""
    import numpy as np

    keys = sorted(first)
    ranks = [np.argsort(np.argsort([values[k] for k in keys])) for values in (first, second)]
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])
