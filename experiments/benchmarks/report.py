"""Recording benchmark results: the machine they ran on and a section of BENCHMARKS.md."""

from __future__ import annotations

import os
import pathlib
import platform
import re
import time

import numpy as np


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, numpy {np.__version__}"


def write_section(name: str, body: str, path: str = "BENCHMARKS.md") -> None:
    p = pathlib.Path(path)
    header = "# Benchmarks\n\nMeasured by `experiments/bench_*.py`, one section each.\n"
    text = p.read_text() if p.exists() else header
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = f"{start}\n## {name}\n\n_{stamp}; {machine()}_\n\n{body.strip()}\n{end}"
    if start in text:
        text = re.sub(
            re.escape(start) + ".*?" + re.escape(end), lambda _: section, text, flags=re.S
        )
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    p.write_text(text)
