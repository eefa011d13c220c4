#!/usr/bin/env bash
# Regenerate everything the README shows: the committed checkpoint, its report and figures,
# the three-seed table, the example predictions and the benchmark. About 10 minutes on 2 cores.
#   MNIST_DIR=../shared/mnist bash scripts/make_docs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
: "${MNIST_DIR:?set MNIST_DIR to the folder with the MNIST files}"
mkdir -p docs
"$PY" main.py --data-dir "$MNIST_DIR" | tee docs/main_output.txt
"$PY" eval.py --data-dir "$MNIST_DIR" --out reports --index 0 > /dev/null
cp reports/{loss,accuracy,confusion_matrix,misclassified,filters,feature_maps}.png docs/
"$PY" predict.py examples/ --show docs/predictions.png | tee docs/predict_output.txt
"$PY" scripts/seeds.py --data-dir "$MNIST_DIR" --json docs/seeds.json | tee docs/seeds_output.txt
"$PY" bench.py --data-dir "$MNIST_DIR" --compile --profile --json docs/bench.json | tee docs/bench_output.txt
