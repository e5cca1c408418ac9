#!/usr/bin/env bash
# Run the speed benchmarks on one CUDA GPU in about 8 minutes and keep the tables.
#
#   bash benchmarks/run_gpu.sh            # from the repository root; tables go to benchmarks/out/
#   OUT=/some/dir PYTHON=/path/to/python bash benchmarks/run_gpu.sh
#
# What it does: first the whole `micro` pipeline on the GPU (every stage under bf16 autocast, a smoke test
# of the CUDA paths, with its per-stage times in $OUT/pipeline_micro/micro/report.md), then the fused
# log-probs, Triton log-probs, rollout generation and training-step tables (the sizes of the speed targets). What it
# does NOT measure: the `tiny` or `small` pipeline's stage times on a GPU (they do not fit in the time
# budget; with time to spare: `python -m minirlhf pipeline --preset tiny --device cuda`) and the
# PPO-iteration benchmark (it needs trained checkpoints).
#
# Needs only torch (CUDA build) and transformers: the project runs from the checkout through PYTHONPATH,
# nothing is installed and nothing is downloaded. It stops before any benchmark if torch sees no CUDA
# GPU, and every benchmark gets `--device cuda`, so nothing silently runs on the CPU. Each benchmark has
# its own time limit, so one that hangs or fails (e.g. a torch.compile problem) cannot take the others
# with it; output is unbuffered, so a benchmark killed at its limit keeps the lines it printed. The
# printed tables are Markdown, ready for benchmarks/RESULTS.md (add the card's name, which the first
# line of each prints). Deliberately simple: fixed sizes, one run each; rerun a line by hand to see the
# spread.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # a python killed by `timeout` would otherwise lose its buffered tables
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-benchmarks/out}"
mkdir -p "$OUT_DIR"

run() {  # run NAME SECONDS ARGS...: one benchmark under a time limit, output shown and kept
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $PY $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$PY" "$@" 2>&1 | grep -v -i "warning" | tee "$OUT_DIR/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
  echo
}

# Fail fast: no benchmark runs unless this interpreter's torch sees a CUDA GPU.
if ! "$PY" -c "
import sys, torch, transformers
print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}')
if not torch.cuda.is_available():
    sys.exit('run_gpu.sh: torch ' + torch.__version__ + ' sees no CUDA GPU (CPU-only build, no driver, or '
             'CUDA_VISIBLE_DEVICES hides it); nothing was measured')
print('GPU:', torch.cuda.get_device_name(0))
" 2>&1 | tee "$OUT_DIR/gpu.txt"; then
  echo "run_gpu.sh: stopping before any benchmark (interpreter: $PY)" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT_DIR/gpu.txt"

# 0. the micro pipeline end to end on the GPU (seconds of work: a smoke test of every stage's CUDA path)
run pipeline_micro 60 -m minirlhf pipeline --preset micro --device cuda --progress=false \
  --out_dir "$OUT_DIR/pipeline_micro" --plots_dir "$OUT_DIR/pipeline_micro/plots"
# 1. fused LM head + log-probs at the target size: B=8, T=1024, V=50257, C=768 (bf16 autocast)
run logprobs 50 benchmarks/bench_logprobs.py --device cuda --B 8 --T 1024
# 1b. the Triton log-prob + entropy kernel vs plain PyTorch and torch.compile, bf16 logits (8, 1024, 50257)
run triton_logprobs 60 benchmarks/bench_triton_logprobs.py --device cuda --B 8 --T 1024
# 2. rollout generation, small preset, batch 64, 64-token prompts, 128 new tokens (eager and CUDA graphs;
#    transformers with its default dynamic cache and with its static cache, auto-compiled by generate)
run generate_small 130 benchmarks/bench_generate.py --device cuda --preset small --hf-static
# 3. training step, small preset (batch 32 x 256 tokens) and the GPT-2 124M shape (batch 16 x 1024),
#    eager and torch.compile for both models
run train_small 80 benchmarks/bench_train.py --device cuda --preset small --steps 20
run train_gpt2 100 benchmarks/bench_train.py --device cuda --preset gpt2 --steps 10 --repeats 2
