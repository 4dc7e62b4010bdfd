"""What every benchmark writes: perf/results/<stem>.json (the figures, with when
and on which kernel) and <stem>.md (the table a person reads), also printed."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def stamp(**fields) -> dict:
    """The run's figures, starting with when and on which kernel they were taken."""
    return {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "kernel": os.uname().release, **fields}


def save(stem: str, data: dict, lines: list[str]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
