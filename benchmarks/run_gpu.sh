#!/usr/bin/env bash
# Run every speed benchmark on one CUDA GPU in about 8 minutes and keep the tables.
#
#   bash benchmarks/run_gpu.sh            # from the repository root; tables go to benchmarks/out/
#   OUT=/some/dir bash benchmarks/run_gpu.sh
#
# Needs only torch (CUDA build) and transformers: the project runs from the checkout through PYTHONPATH,
# nothing is installed and nothing is downloaded. Each benchmark has its own time limit, so one that
# hangs or fails (e.g. a torch.compile problem) cannot take the others with it. The printed tables are
# Markdown, ready for benchmarks/RESULTS.md (add the card's name, which the first line of each prints).
# Deliberately simple: fixed sizes (DESIGN §7's), one run each; rerun a line by hand to see the spread.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR="${OUT:-benchmarks/out}"
mkdir -p "$OUT_DIR"

run() {  # run NAME SECONDS ARGS...: one benchmark under a time limit, output shown and kept
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): python $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" python "$@" 2>&1 | grep -v -i "warning" | tee "$OUT_DIR/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
  echo
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT_DIR/gpu.txt"

# 1. fused LM head + log-probs at DESIGN §7's size: B=8, T=1024, V=50257, C=768 (bf16 autocast)
run logprobs 60 benchmarks/bench_logprobs.py --B 8 --T 1024
# 2. rollout generation, small preset, batch 64, 64-token prompts, 128 new tokens (eager and CUDA graphs;
#    transformers with its default dynamic cache and with its static cache + torch.compile)
run generate_small 150 benchmarks/bench_generate.py --preset small --hf-static
# 3. training step, small preset (batch 32 x 256 tokens) and the GPT-2 124M shape (batch 16 x 1024),
#    eager and torch.compile for both models
run train_small 120 benchmarks/bench_train.py --preset small --steps 20
run train_gpt2 150 benchmarks/bench_train.py --preset gpt2 --steps 10 --repeats 2
