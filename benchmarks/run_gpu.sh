#!/usr/bin/env bash
# Run the speed benchmarks on one CUDA GPU in at most 7 minutes (420 s, worst case) and keep the tables.
#
#   bash benchmarks/run_gpu.sh            # from the repository root; results go to benchmarks/out/
#   OUT=/some/dir PYTHON=/path/to/python bash benchmarks/run_gpu.sh
#
# What it does: first the whole `micro` pipeline on the GPU (every stage under bf16 autocast, a smoke test
# of the CUDA paths), then the fused log-probs, Triton log-probs, rollout generation and training-step
# tables (the sizes of the speed targets; the GPT-2 124M shape eagerly only, its torch.compile does not
# fit the time budget). What it does NOT measure: the `tiny` or `small` pipeline's stage times on a GPU
# (they do not fit in the time budget; with time to spare: `python -m minirlhf pipeline --preset tiny
# --device cuda`), the PPO-iteration benchmark (it needs trained checkpoints) and the GPT-2 shape under
# torch.compile (`python benchmarks/bench_train.py --device cuda --preset gpt2 --steps 10 --repeats 2`).
#
# What it keeps, three files directly in $OUT (default benchmarks/out), so that a runner that brings
# back only a few files, not deep in folders, gets all of them: results.txt (the GPU and versions, then
# every benchmark's printed output, warnings left out, with its exit status and seconds; exit 124 means
# killed at its limit), pipeline_report.md and pipeline_summary.json (the micro pipeline's per-stage times
# and metrics; the pipeline itself, checkpoints and plots, is written to a fresh folder under /tmp). The
# same output is printed as it comes (of the pipeline's, only its last 3 lines), kept short for a runner
# that shows only the end of it: no progress bars, warnings left out.
#
# Time: each step has its own limit (seconds: version check 30, nvidia-smi 10, pipeline 60, log-probs 30,
# Triton log-probs 45, generation 100, training step small 65, GPT-2 shape 40; 380 in all); at its limit
# a step is sent SIGTERM and, still running 5 s later, SIGKILL, so the whole script ends within
# 380 + 8 x 5 = 420 s
# (plus a second or two of shell): it fits one 10-minute command. On a device that a session holds for
# 15 minutes, run it once, e.g. `OUT=$OUT bash benchmarks/run_gpu.sh` with a 600 s command limit; with
# the machine's start-up that leaves a few minutes to rerun a single line by hand.
#
# Needs only torch (CUDA build) and transformers (and triton for its table): the project runs from the
# checkout through PYTHONPATH, nothing is installed and nothing is downloaded. It stops before any
# benchmark if torch sees no CUDA GPU, and every benchmark gets `--device cuda`, so nothing silently runs
# on the CPU. Each benchmark has its own time limit, so one that hangs or fails (e.g. a torch.compile
# problem) cannot take the others with it; Python runs unbuffered and the warning filter passes each line
# on at once, so a benchmark killed at its limit (or the whole command killed) keeps the lines it printed;
# each benchmark prints its eager table before it compiles anything. The printed tables are Markdown,
# ready for benchmarks/RESULTS.md (add the card's name, which the first line of each prints).
# Deliberately simple: fixed sizes, one run each; rerun a line by hand to see the spread.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # a python killed by `timeout` would otherwise lose its buffered tables
export TRANSFORMERS_VERBOSITY=error  # no advisory log lines from transformers
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-benchmarks/out}"
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.txt"
: > "$RESULTS"
KILL_AFTER=5  # seconds a step may run past its limit before it is killed (SIGKILL)

say() { echo "$*" | tee -a "$RESULTS"; }

run() {  # run NAME SECONDS ARGS...: one step under a time limit, output shown and appended to results.txt
  local name=$1 limit=$2
  shift 2
  say "== $name (limit ${limit}s): python $*"
  local t0=$SECONDS
  # --line-buffered: grep would otherwise hold back up to 4 kB that a kill then loses
  timeout --kill-after=$KILL_AFTER "$limit" "$PY" "$@" 2>&1 | grep --line-buffered -v -i "warning" \
    | tee -a "$RESULTS" | ${SHOW:-cat}
  say "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
  say
}

# Fail fast: no benchmark runs unless this interpreter's torch sees a CUDA GPU.
if ! timeout --kill-after=$KILL_AFTER 30 "$PY" -c "
import sys, torch, transformers
print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}')
if not torch.cuda.is_available():
    sys.exit('run_gpu.sh: torch ' + torch.__version__ + ' sees no CUDA GPU (CPU-only build, no driver, or '
             'CUDA_VISIBLE_DEVICES hides it); nothing was measured')
print('GPU:', torch.cuda.get_device_name(0))
" 2>&1 | tee -a "$RESULTS"; then
  say "run_gpu.sh: stopping before any benchmark (interpreter: $PY)"
  exit 1
fi
timeout --kill-after=$KILL_AFTER 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  2>&1 | tee -a "$RESULTS"
say

# 0. the micro pipeline end to end on the GPU (seconds of work: a smoke test of every stage's CUDA path),
#    written under /tmp; only its report and summary are kept, and only its last 3 lines are printed
#    (all of them are in results.txt)
PIPE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/run_gpu_pipeline.XXXXXX")
SHOW="tail -n 3" run pipeline_micro 60 -m minirlhf pipeline --preset micro --device cuda --progress=false \
  --out_dir "$PIPE_DIR/out" --plots_dir "$PIPE_DIR/plots"
cp "$PIPE_DIR/out/micro/report.md" "$OUT_DIR/pipeline_report.md" 2>/dev/null || say "(no pipeline report to keep)"
cp "$PIPE_DIR/out/micro/pipeline_summary.json" "$OUT_DIR/pipeline_summary.json" 2>/dev/null
# 1. fused LM head + log-probs at the target size: B=8, T=1024, V=50257, C=768 (bf16 autocast)
run logprobs 30 benchmarks/bench_logprobs.py --device cuda --B 8 --T 1024
# 1b. the Triton log-prob + entropy kernel vs plain PyTorch (printed first) and torch.compile, bf16 logits
#     (8, 1024, 50257)
run triton_logprobs 45 benchmarks/bench_triton_logprobs.py --device cuda --B 8 --T 1024
# 2. rollout generation, small preset, batch 64, 64-token prompts, 128 new tokens (eager rows printed
#    first; then CUDA graphs, and transformers with its static cache, auto-compiled by generate)
run generate_small 100 benchmarks/bench_generate.py --device cuda --preset small --hf-static
# 3. training step, small preset (batch 32 x 256 tokens), eager then torch.compile for both models; the
#    GPT-2 124M shape (batch 16 x 1024), eager only
run train_small 65 benchmarks/bench_train.py --device cuda --preset small --steps 20
run train_gpt2 40 benchmarks/bench_train.py --device cuda --preset gpt2 --steps 10 --repeats 2 --compile off
say "run_gpu.sh: done after $SECONDS s; kept: $(cd "$OUT_DIR" && ls | tr '\n' ' ')"
