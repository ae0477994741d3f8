"""The pilot table of docs/replication.md from the runs of docs/replication/pilot.sh:

    python docs/replication/pilot_table.py runs/evidence/pilot

one row per run directory (named pPOOL-eEPOCHS-wWIDTH-bBATCH-tTEMPERATURE): SimCLR's full-pool
linear probe and kNN (its report's table.csv), the untrained encoder's (mean +- std over
random-init/eval-s*.json) and the gap, and the training seconds of the run.
"""
import csv
import json
import re
import statistics
import sys
from pathlib import Path

NAME = re.compile(r"p(\d+)-e(\d+)-w([\d.]+)-b(\d+)-t([\d.]+)")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


print("| pool | epochs | width | batch | temperature | SimCLR linear % | random init linear % "
      "| gap | SimCLR kNN % | random init kNN % | gap | training s |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for run in sorted(Path(sys.argv[1]).iterdir(), key=lambda p: p.name):
    match = NAME.fullmatch(run.name)
    evals = [json.loads(p.read_text()) for p in sorted(run.glob("random-init/eval-s*.json"))]
    if match is None or not (run / "report" / "table.csv").exists() or not evals:
        continue
    with open(run / "report" / "table.csv") as f:
        (full,) = [r for r in csv.DictReader(f) if r["strategy"] == "full"
                   and r["method"] == "simclr"]
    cells = []
    for metric in ("linear_acc", "knn_acc"):
        trained = float(full[f"{metric}_mean"])
        m, s = mean_std([e[metric] for e in evals])
        cells += [f"{trained:.1f}", f"{m:.1f} +- {s:.1f}", f"{trained - m:+.1f}"]
    pool, epochs, width, batch, temperature = match.groups()
    print(f"| {int(pool):,} | {epochs} | {width} | {batch} | {temperature} | "
          + " | ".join(cells) + f" | {float(full['train_time_s_mean']):.0f} |")
