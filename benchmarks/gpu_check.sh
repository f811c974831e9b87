#!/usr/bin/env bash
# Issue 17's GPU check: the one script a session with a GPU runs, from the project root.
#
# It runs the tests that need CUDA (CUDA-graph decoding gives the plain path's tokens), then
# benchmarks/gpu.py: decoding (gpt2cli vs transformers, in process and `gpt2 generate` in a
# fresh process), peak memory for small/medium/large, training beside transformers and
# nanoGPT with a torch.profiler table, and `gpt2 train --compile` itself (the default
# --loss auto, then --loss chunked). Everything lands
# in $OUT: log (tee it), gpu.json (rewritten after each section), profile.txt.
#
# Setup where the device tool lends a GPU (see ../shared/gpu/README.md for the same steps):
#   mkdir -p .peers/nanogpt .whl; printf '/.peers/\n/.whl/\n' >> .git/info/exclude
#   nanoGPT's model.py (a yardstick, never committed): the search tool's fetch github:karpathy/nanoGPT,
#     then git --git-dir=<path it returns> show HEAD:model.py > .peers/nanogpt/model.py
#   pydantic and its needs as cp312 wheels in .whl/ (the GPU machine lacks them): pip download
#     --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 -d .whl
#     pydantic pydantic-core annotated-types typing-inspection typing-extensions
#   run: command `set -o pipefail; bash benchmarks/gpu_check.sh 2>&1 | tee $OUT/log.txt`,
#     carry [".peers", ".whl"], timeout_s 600.
#   gpu.json is rewritten after each section and each section prints its table as it ends, so a
#   run cut short keeps what it measured.
# DRY=1 runs the same steps on the CPU with tiny shapes (about a minute), to check the script:
#   DRY=1 OUT=/tmp/gpu-dry bash benchmarks/gpu_check.sh
# The whole check does not fit one 600 s call (each torch.compile takes about a minute), nor, with
# the machine's start, one 15-minute lend. SECTIONS picks benchmarks/gpu.py's sections, TESTS=0 skips
# the tests, LEAN=1 keeps only the training rows issue 17 compares (compiled, no transformers), and
# BENCH_S is gpu.py's time limit. On one warm machine, the figures the issue needs first:
#   1. LEAN=1 TESTS=0 BENCH_S=560 SECTIONS=decode,train,memory bash benchmarks/gpu_check.sh
#   2. SECTIONS=cli_train BENCH_S=420 bash benchmarks/gpu_check.sh   (the tests, then `gpt2 train` itself)
# each with its own $OUT/gpu.json.
set -u -o pipefail
export PYTHONUNBUFFERED=1 COLUMNS=140
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT"
W="$(mktemp -d)"
if [ -z "${DRY:-}" ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  fi
  export PYTHONPATH="/tmp/site:$ROOT/src"
  PY=python3; MODE=""; STORIES=20MB; BENCH_S="${BENCH_S:-450}"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
else
  export PYTHONPATH="$ROOT/src"
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
  MODE="--dry"; STORIES=2MB; BENCH_S="${BENCH_S:-300}"
fi

# t SECONDS CMD...: run with a time limit, then print the exit code and the seconds it took.
t() {
  local limit=$1; shift
  local s; s=$(date +%s.%N)
  timeout "$limit" "$@"; local rc=$?
  echo "[rc=$rc $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N)-$s}") s] $*"
  return $rc
}
fails=0
SECTIONS="${SECTIONS:-decode,memory,train,cli_train}"

echo "== versions"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0), 'transformers', transformers.__version__)"

if [ "${TESTS:-1}" != 0 ]; then
  echo "== tests: static and CUDA-graph decoding, generate timing, activation checkpointing"
  t 120 $PY -m pytest -q -p no:cacheprovider -rs tests/test_static_decode.py tests/test_generate_timing.py \
    tests/test_activation_checkpointing.py 2>&1 | tail -12 || fails=$((fails + 1))
fi

if [[ ",$SECTIONS," == *",cli_train,"* ]]; then
  echo "== data for the gpt2 train row"
  t 60 $PY -m gpt2cli tokenize --builtin-stories $STORIES -o "$W/stories" 2>&1 | tail -2 || fails=$((fails + 1))
fi

echo "== benchmarks/gpu.py (sections in order: $SECTIONS)"
NANO="$ROOT/.peers/nanogpt/model.py"
[ -f "$NANO" ] || echo "note: no $NANO, the nanoGPT rows are skipped"
t $BENCH_S $PY benchmarks/gpu.py $MODE --nanogpt "$NANO" --data "$W/stories" --rounds 3 --steps 10 \
  --sections "$SECTIONS" ${LEAN:+--lean} --out "$OUT/gpu.json" --profile-out "$OUT/profile.txt" 2>&1 | grep -v -e "Loading weights" -e "loss_type=None" \
  || fails=$((fails + 1))

rm -rf "$W"
ls -la "$OUT"
echo "== done: $fails step(s) failed"
[ "$fails" -eq 0 ]
