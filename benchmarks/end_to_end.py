"""End-to-end cost of data-efficient SSL: (embed + select + train on a fraction f) against
training on all the data for the same number of epochs, both measured in one run.

Every step is a sas-ray Ray stage function, exactly what ``sas-ray pipeline`` calls:
:func:`sas_ray.stages.ingest.ingest` (shards), :func:`sas_ray.executors.ray.train.fit` (Ray
Train, for the proxy, the full-data run and the subset run), :func:`sas_ray.stages.embed.embed`
(Ray Data actors), :func:`sas_ray.stages.latent.partition` and
:func:`sas_ray.stages.rank.rank` (Ray tasks over latent classes; latent classes = labels,
strategy ``sas``). The data is a stratified
subset of the CIFAR-10 tar (``--pool`` train images), written as an ImageFolder directory
(JPEG bytes unchanged) and ingested once.

Reported (seconds): ray.init, ingest and proxy training (once per data set and reused for
every fraction, so outside the comparison; the ratio including the proxy is printed too;
``--quick`` embeds with an untrained proxy instead, which costs the same to run),
the full-data fit, embed, partition, rank, the subset fit; and the ratios

    pipeline / full = (embed + partition + rank + subset fit) / full fit
    the same with each fit's Ray Train startup (time outside training epochs) left out.

Usage: ``python -m benchmarks.end_to_end [--quick]``; writes
``benchmarks/results/end_to_end.json`` (``end_to_end-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import machine_info, machine_line
from sas_ray.config import Config
from sas_ray.core.data.sources.imagefolder import imagefolder_tar
from sas_ray.core.methods.registry import model_from_config
from sas_ray.core.models.checkpoint import save_encoder
from sas_ray.errors import SasRayError
from sas_ray.stages.pool import stratified

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
SIZES = {  # pool images, epochs, proxy epochs (0: an untrained proxy)
    "full": (4000, 3, 2),
    "quick": (1000, 2, 0),
}


def write_imagefolder(archive: Path, pool: int, root: Path) -> int:
    """Write a stratified ``pool`` of the archive's train images to ``root/train/<class>/``."""
    if not archive.is_file():
        raise SasRayError(f"CIFAR-10 archive {archive} does not exist; pass --data pointing at "
                          "cifar10-jpeg.tar.gz (see ../shared/datasets/README.md)")
    src = imagefolder_tar(str(archive))
    train = [i for i, it in enumerate(src.items) if it.split == "train"]
    labels = np.array([src.items[i].label for i in train])
    chosen = {train[i] for i in stratified(labels, pool, seed=0)}
    for i, data in src.stream():
        if i in chosen:
            item = src.items[i]
            path = root / "train" / src.class_names[item.label] / item.name.rsplit("/", 1)[-1]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return min(pool, len(train))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 images, 2 epochs")
    parser.add_argument("--fraction", type=float, default=0.4)
    parser.add_argument("--pool", type=int, help="train images (default 4,000; quick 1,000)")
    parser.add_argument("--epochs", type=int, help="epochs of both fits (default 3; quick 2)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    args = parser.parse_args(argv)
    pool, epochs, proxy_epochs = SIZES["quick" if args.quick else "full"]
    pool, epochs = args.pool or pool, args.epochs or epochs

    from sas_ray.executors.ray.session import ensure_ray
    from sas_ray.executors.ray.train import fit
    from sas_ray.io.artifacts import subset_ids
    from sas_ray.stages.embed import embed
    from sas_ray.stages.ingest import ingest
    from sas_ray.stages.latent import partition
    from sas_ray.stages.rank import rank

    cores = len(os.sched_getaffinity(0))
    machine = machine_info()
    print(machine_line(machine))
    cfg = Config()
    cfg.run.num_cpus = cores
    cfg.model.arch, cfg.model.width = "resnet10", 0.25
    cfg.train.batch_size = 256
    cfg.latent.method = "labels"
    t: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sas-ray-bench-e2e-") as tmp:
        root = Path(tmp)
        n = write_imagefolder(Path(args.data), pool, root / "images")
        _, t["ray_init"] = timed(lambda: ensure_ray(cfg.run))
        shards = str(root / "shards")
        _, t["ingest"] = timed(lambda: ingest(str(root / "images"), shards, cfg))

        proxy = str(root / "proxy.pt")
        if proxy_epochs:
            cfg.train.epochs = proxy_epochs
            run, t["proxy_fit"] = timed(lambda: fit(cfg, shards, str(root / "proxy")))
            proxy = run["checkpoint"]
        else:
            save_encoder(proxy, model_from_config(cfg), cfg)
        cfg.train.epochs = epochs
        full, t["full_fit"] = timed(lambda: fit(cfg, shards, str(root / "full")))
        _, t["embed"] = timed(lambda: embed(cfg, shards, proxy, str(root / "emb")))
        _, t["partition"] = timed(lambda: partition(cfg, str(root / "emb"), str(root / "part")))
        _, t["rank"] = timed(lambda: rank(cfg, str(root / "emb"), str(root / "part"), "sas",
                                          str(root / "rank")))
        ids = subset_ids(str(root / "rank"), args.fraction)
        sub, t["subset_fit"] = timed(lambda: fit(cfg, shards, str(root / "subset"), ids))
    select = t["embed"] + t["partition"] + t["rank"]
    pipeline = select + t["subset_fit"]
    full_train = t["full_fit"] - full["startup_seconds"]
    sub_train = t["subset_fit"] - sub["startup_seconds"]
    result = {
        "quick": args.quick, "machine": machine,
        "settings": {"images": n, "fraction": args.fraction, "subset_images": int(ids.size),
                     "epochs": epochs, "proxy_epochs": proxy_epochs, "arch": cfg.model.arch,
                     "width": cfg.model.width, "batch_size": cfg.train.batch_size,
                     "train_workers": cfg.train.num_workers, "embed_views": cfg.embed.views,
                     "strategy": "sas", "latent": "labels",
                     "stages": "sas_ray.stages.ingest.ingest, sas_ray.executors.ray.train.fit, "
                               "sas_ray.stages.embed.embed, "
                               "sas_ray.stages.latent.partition, sas_ray.stages.rank.rank (Ray)"},
        "seconds": {k: round(v, 2) for k, v in t.items()}
        | {"full_fit_startup": round(full["startup_seconds"], 2),
           "subset_fit_startup": round(sub["startup_seconds"], 2),
           "select_total": round(select, 2), "pipeline": round(pipeline, 2)},
        "ratio_pipeline_vs_full": round(pipeline / t["full_fit"], 3),
        "ratio_pipeline_with_proxy_vs_full": (round((pipeline + t["proxy_fit"]) / t["full_fit"], 3)
                                              if "proxy_fit" in t else None),
        "ratio_pipeline_vs_full_without_startup": round(
            (select + sub_train) / max(full_train, 1e-9), 3),
        "ratio_subset_train_vs_full_train": round(sub_train / max(full_train, 1e-9), 3),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }
    s = result["seconds"]
    print(f"{n:,} CIFAR-10 images, {epochs} epochs, fraction {args.fraction} "
          f"({ids.size:,} images), resnet10 x0.25, batch 256, 1 Ray Train worker")
    proxy_text = (f"proxy fit ({proxy_epochs} epochs) {s['proxy_fit']:.1f} s" if proxy_epochs
                  else "untrained proxy (quick)")
    print(f"once: ray.init {s['ray_init']:.1f} s, ingest {s['ingest']:.1f} s, {proxy_text}")
    print(f"full data : fit {s['full_fit']:.1f} s (startup {s['full_fit_startup']:.1f} s)")
    print(f"SAS subset: embed {s['embed']:.1f} + partition {s['partition']:.1f} + rank "
          f"{s['rank']:.1f} + fit {s['subset_fit']:.1f} s (startup "
          f"{s['subset_fit_startup']:.1f} s) = {s['pipeline']:.1f} s")
    with_proxy = result["ratio_pipeline_with_proxy_vs_full"]
    print(f"ratio pipeline/full: {result['ratio_pipeline_vs_full']:.2f}x "
          f"({f'{with_proxy:.2f}x' if with_proxy else 'n/a'} with the proxy fit, "
          f"{result['ratio_pipeline_vs_full_without_startup']:.2f}x without Ray Train startup; "
          f"subset/full training epochs {result['ratio_subset_train_vs_full_train']:.2f}x)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("end_to_end-quick.json" if args.quick else "end_to_end.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
