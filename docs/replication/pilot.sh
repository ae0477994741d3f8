#!/usr/bin/env bash
# The pilot: SimCLR on the full pool vs an untrained encoder of the same architecture.
#   docs/replication/pilot.sh POOL EPOCHS WIDTH BATCH TEMPERATURE
#     -> runs/evidence/pilot/pPOOL-eEPOCHS-wWIDTH-bBATCH-tTEMPERATURE
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
pool=$1 epochs=$2 width=$3 batch=$4 temperature=$5
name=p$pool-e$epochs-w$width-b$batch-t$temperature
out=runs/evidence/pilot/$name
shards=runs/evidence/shards
[ -e "$shards/manifest.json" ] ||
  .venv/bin/sas-ray ingest ../shared/datasets/cifar10-jpeg.tar.gz "$shards" --run.executor local
MODEL=(--model.arch resnet10 --model.width "$width")
uptime
/usr/bin/time -f "wall %e s, user %U s, sys %S s, max rss %M KiB" \
  .venv/bin/sas-ray pipeline --run.executor local --data.source "$shards" --data.pool_size "$pool" \
  "${MODEL[@]}" --proxy.arch resnet10 --proxy.width "$width" --train.epochs "$epochs" \
  --proxy.epochs "$epochs" --train.batch_size "$batch" \
  --method.simclr.temperature "$temperature" --embed.views 1 --select.strategies "[]" \
  --sweep.fractions 0.5 --eval.knn_k 200 --run.storage "$out" --run.name "pilot-$name"
.venv/bin/python docs/replication/random_init.py "$out/random-init" "${MODEL[@]}"
for seed in 0 1 2; do
  .venv/bin/sas-ray evaluate --checkpoint "$out/random-init/random-init-s$seed.pt" --data "$out/pool" \
    --eval.knn_k 200 --out "$out/random-init/eval-s$seed.json"
done
uptime
