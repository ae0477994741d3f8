#!/usr/bin/env bash
# each SSL method on the same CIFAR-10 pool and budget, full data, vs random init.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
COMMON=(--run.executor local --data.source runs/methods/shards --data.pool_size 4000
        --model.arch resnet10 --model.width 0.25 --proxy.arch resnet10 --proxy.width 0.25
        --train.epochs 15 --proxy.epochs 15 --train.batch_size 256 --embed.views 1
        --select.strategies "[]" --sweep.fractions 0.5 --sweep.methods simclr,moco,byol,simsiam
        --eval.knn_k 200 --run.storage runs/methods/cifar --run.name methods-cifar10-cpu)
uptime
/usr/bin/time -v .venv/bin/sas-ray pipeline "${COMMON[@]}"
uptime
