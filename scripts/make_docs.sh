#!/usr/bin/env bash
# Regenerate everything the README shows: the committed checkpoints, their reports and figures, the
# seed tables of the three recipes and of torchrun, the ablation runs, the example predictions and
# the benchmark and the app's screenshot. About an hour on 2 cores; run nothing else meanwhile (the timings are in it).
#   MNIST_DIR=../shared/mnist bash scripts/make_docs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
: "${MNIST_DIR:?set MNIST_DIR to the folder with the MNIST files}"
mkdir -p docs/outputs docs/figures

# The default recipe: the committed checkpoint (seed 0), its report and figures.
"$PY" main.py --data-dir "$MNIST_DIR" | tee docs/outputs/main_output.txt
"$PY" eval.py --data-dir "$MNIST_DIR" --report-dir reports --index 0 > /dev/null
cp reports/{loss,accuracy,confusion_matrix,misclassified,filters,feature_maps}.png docs/figures/
"$PY" predict.py examples/ --out docs/figures/predictions.png | tee docs/outputs/predict_output.txt
# The app's screenshot: the browser test takes it (needs Chromium; see the README's "Draw a digit").
APP_SCREENSHOTS=docs/figures "$PY" -m pytest -n 0 -q tests/test_app.py -k "drawing_with_the_mouse or phone"

# Three seeds of each recipe, each a fresh `python main.py` process; one torchrun row for comparison.
"$PY" -m scripts.seeds --data-dir "$MNIST_DIR" --out docs/outputs/seeds.json | tee docs/outputs/seeds_output.txt
"$PY" -m scripts.seeds --data-dir "$MNIST_DIR" --processes 2 --out-dir runs/ddp --out docs/outputs/seeds_ddp.json \
  | tee docs/outputs/seeds_ddp_output.txt
# Why 2 processes x 1 thread train slower here than 1 process x 2 threads: per-step costs, alternating.
for round in 1 2 3; do
  echo "$ python -m scripts.step_cost"; "$PY" -m scripts.step_cost
  echo "$ torchrun --standalone --nproc-per-node 2 -m scripts.step_cost"
  "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m scripts.step_cost 2>/dev/null
done | tee docs/outputs/step_cost_output.txt
"$PY" -m scripts.seeds --data-dir "$MNIST_DIR" --recipe fast --out-dir runs/fast --out docs/outputs/seeds_fast.json \
  | tee docs/outputs/seeds_fast_output.txt
"$PY" -m scripts.seeds --data-dir "$MNIST_DIR" --recipe best --out-dir runs/best --out docs/outputs/seeds_best.json \
  | tee docs/outputs/seeds_best_output.txt
cp runs/best/seed0/lenet5.pt checkpoints/lenet5-best.pt
cp runs/best/seed0/lenet5.json checkpoints/lenet5-best.json
"$PY" eval.py --weights checkpoints/lenet5-best.pt --data-dir "$MNIST_DIR" --report-dir reports/best \
  | tee docs/outputs/best_eval_output.txt

# What each part of the best recipe adds (seed 0; the default and best rows come from the runs above).
"$PY" -m scripts.seeds --data-dir "$MNIST_DIR" --seeds 0 --recipe best --elastic-alpha 0 --out-dir runs/ablation-affine \
  | tee docs/outputs/ablation_output.txt
"$PY" -m scripts.seeds --data-dir "$MNIST_DIR" --seeds 0 --recipe best --epochs 10 --out-dir runs/ablation-short \
  | tee -a docs/outputs/ablation_output.txt

# What a moving average of the weights would add to best, on the validation hold-out (one run scores every decay).
{
  echo "$ python -m scripts.weight_average --recipe best --decays 0.99 0.998 0.999 0.9995"
  "$PY" -m scripts.weight_average --data-dir "$MNIST_DIR" --recipe best --decays 0.99 0.998 0.999 0.9995
  echo "$ python -m scripts.weight_average --recipe best --epochs 100 --decays 0.999 0.9995 0.9998"
  "$PY" -m scripts.weight_average --data-dir "$MNIST_DIR" --recipe best --epochs 100 --decays 0.999 0.9995 0.9998
} | tee docs/outputs/weight_average_output.txt

# What each part of the default recipe adds (seed 0; the default row is seed 0 above).
for flags in "--momentum 0 --no-nesterov --schedule constant --no-augment" "--no-augment"; do
  echo "$ python -m scripts.seeds --data-dir ../shared/mnist --seeds 0 $flags"
  # shellcheck disable=SC2086  # the flags are meant to split
  "$PY" -m scripts.seeds --data-dir "$MNIST_DIR" --seeds 0 $flags --out-dir "runs/ablation-default"
done | tee docs/outputs/default_ablation_output.txt

# Time to 99 % against the fastest public MNIST script (scripts/peer.py), alternating sides.
"$PY" -m scripts.bench --data-dir "$MNIST_DIR" --sides peer fast default --rounds 3 --best-rounds 0 --profile --out docs/outputs/bench.json | tee docs/outputs/bench_output.txt

# TensorBoard's Scalars page for the README's example run (its checkpoint and reports go to a temporary folder).
tb=$(mktemp -d)
"$PY" main.py --data-dir "$MNIST_DIR" --recipe fast --limit 10000 --tensorboard "$tb/runs" --out "$tb/lenet5.pt" \
  --report-dir "$tb/reports" > /dev/null
"$PY" -m scripts.tensorboard_screenshot "$tb/runs" --out docs/figures/tensorboard.png --tag-filter "train/|epoch/" \
  --charts 4
rm -rf "$tb"
