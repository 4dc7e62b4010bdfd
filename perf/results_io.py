"""What every benchmark writes: perf/results/<stem>.json (the figures, with when
and on which kernel) and <stem>.md (the table a person reads), also printed;
and how the BPF_PROG_TEST_RUN ones measure side by side (interleaved)."""
from __future__ import annotations

import json
import os
import statistics
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


def interleaved_medians(runs: dict, rounds: int, repeat: int) -> dict:
    """key -> (program fd, frame): the median ns/packet of each over ``rounds``
    rounds, every key measured once per round in turn, so that the load of a
    shared machine falls on all of them alike."""
    from vnfchain.testrun import run_xdp
    samples = {key: [] for key in runs}
    for _ in range(rounds):
        for key, (fd, frame) in runs.items():
            samples[key].append(run_xdp(fd, frame, repeat=repeat).duration_ns)
    return {key: statistics.median(v) for key, v in samples.items()}
