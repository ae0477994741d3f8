#!/usr/bin/env bash
# The CPU replication (docs/replication.md), in slices of one config, each a `sas-ray pipeline`
# command on the same storage: a later slice reuses the proxy, embeddings, rankings and every
# trial an earlier one finished, and an interrupted slice resumes (training from its last
# checkpoint). Each slice's report is copied to docs/replication/results/<slice>/.
#   docs/replication/run.sh [SLICE ...]     (default: slices 1-6, in this order)
# STORAGE=DIR runs on another storage (slice 7 does: none of its trials is shared).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
CONFIG=configs/replicate_cifar10_cpu.yaml
STORAGE=${STORAGE:-outputs/replicate_cifar10_cpu}
SHARDS=$STORAGE/shards
[ -e "$SHARDS/manifest.json" ] ||
  .venv/bin/sas-ray ingest ../shared/datasets/cifar10-jpeg.tar.gz "$SHARDS" --run.executor local

declare -A SLICES=(
  # the decisive comparison: full data, sas and random at 20% and 40%, labels, 5 paired seeds
  [1-decisive]=""
  # the paper's headline: least- vs most-forgettable vs sas vs random; the reference's rule
  [2-forgetting]="--select.strategies sas,sas-reference,random,forgetting-least,forgetting-most
                  --sweep.fractions 0.4 --sweep.seeds 0,1,2
                  --analyze.compare forgetting-least:forgetting-most,sas:sas-reference"
  # latent classes without the ground truth
  [3-latent]="--sweep.latent_methods labels,few-labels,kmeans --sweep.fractions 0.4
              --sweep.seeds 0,1,2"
  # the other curation strategies
  [4-strategies]="--select.strategies sas,random,random-balanced,prototypes-easy,semdedup,hkmeans,dbp
                  --sweep.fractions 0.4 --sweep.seeds 0,1,2"
  # how much can be dropped
  [5-fractions]="--sweep.fractions 0.2,0.4,0.6,0.8 --sweep.seeds 0,1,2"
  # every SSL method (MoCo's queue shorter than the 1,600 images of an epoch at 40%, so that
  # no image is its own negative)
  [6-methods]="--sweep.methods simclr,moco,byol,simsiam --sweep.fractions 0.4 --sweep.seeds 0,1,2
               --sweep.include_full false --method.moco.queue_size 1024"
  # a proxy trained 4x longer than its students (120 epochs), on a storage of its own:
  #   STORAGE=outputs/replicate_cifar10_cpu_proxy120 docs/replication/run.sh 7-proxy120
  [7-proxy120]="--proxy.epochs 120 --sweep.include_full false --sweep.seeds 0,1,2"
)
ORDER=(1-decisive 2-forgetting 5-fractions 3-latent 4-strategies 6-methods)

for slice in "${@:-${ORDER[@]}}"; do
  # shellcheck disable=SC2086  # the slice's flags split on whitespace
  flags=(${SLICES[$slice]})
  echo "== slice $slice: $(uptime)"
  /usr/bin/time -f "wall %e s, user %U s, sys %S s, max rss %M KiB" .venv/bin/sas-ray pipeline \
    --config "$CONFIG" --data.source "$SHARDS" --run.storage "$STORAGE" "${flags[@]}"
  mkdir -p "docs/replication/results/$slice"
  cp "$STORAGE"/report/{table.md,table.csv,tests.csv,savings.csv} "docs/replication/results/$slice/"
  # the data savings within 1.0 point as well (the report's own are within analyze.tolerance)
  .venv/bin/sas-ray analyze "$STORAGE/sweep" --config "$CONFIG" --analyze.tolerance 1.0 \
    --out "$STORAGE/report-tolerance-1" > /dev/null
  cp "$STORAGE/report-tolerance-1/savings.csv" "docs/replication/results/$slice/savings-1.0.csv"
  echo "sas-ray pipeline --config $CONFIG --data.source $SHARDS --run.storage $STORAGE ${flags[*]}" \
    > "docs/replication/results/$slice/command.txt"
  echo "== slice $slice done: $(uptime)"
done
