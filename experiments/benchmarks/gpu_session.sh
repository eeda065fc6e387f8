#!/usr/bin/env bash
# The GPU measurements of experiments/benchmarks, prepared to fit a machine lent by the minute (one
# H100/H200; at most 8.5 minutes per part, the sum of its timeouts). Run from the repository root:
#
#   bash experiments/benchmarks/gpu_session.sh fetch     # once, on a machine with PyPI: wheels into .whl/
#   bash experiments/benchmarks/gpu_session.sh 1 OUTDIR  # on the GPU: the issue's targets
#   bash experiments/benchmarks/gpu_session.sh 2 OUTDIR  # on the GPU: the rest of the levers table
#
# With this workplace's device tool: run(command="bash experiments/benchmarks/gpu_session.sh 1 $OUT",
# carry=[".whl"], timeout_s=560); the files come back from $OUT.
#
# Part 1: CLIP ViT-B/16 in bf16 (XLA and cuDNN attention, batch 256 and 512) against open_clip (bf16
# autocast, torch.compile and eager) at batch 256, and the ViT-B/16 + lm-base early-fusion step.
# Part 2: the levers one at a time on top of bf16 + cuDNN (fp32, remat, scan, donation, XLA GPU flags).
# The machine needs jax (CUDA), flax, optax, torch and timm; .whl/ adds ml_collections and open_clip.
# Each run.py call has a --budget-s (variants not prepared in time are listed as not run) and a timeout,
# and writes OUTDIR/gpu_<model>_part<N>.{md,csv} plus its log (clip.log, llava.log); copy them into results/ afterwards.
set -uo pipefail
cd "$(dirname "$0")/../.."
part=${1:-1}
out=${2:-${OUT:-/tmp/mmjax_benchmarks}}

if [ "$part" = fetch ]; then
  grep -qx '/.whl/' "$(git rev-parse --git-path info/exclude)" 2>/dev/null ||
    echo '/.whl/' >>"$(git rev-parse --git-path info/exclude)"
  # Python 3.12 x86-64 wheels, no dependencies: the rest is on the GPU machine's image.
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    ml_collections==1.1.0 open_clip_torch==3.3.0 timm==1.0.31 ftfy==6.3.1 wcwidth==0.9.4
fi

# MMJAX_BENCH_SMOKE=1: the same calls at tiny sizes, on any machine (CPU too), to check this script.
clip=clip-vit-b16 llava=llava-b16-base batch=256 big=512 lbatch=16 smoke=()
if [ "${MMJAX_BENCH_SMOKE:-0}" = 1 ]; then
  clip=clip-tiny llava=llava-tiny batch=2 big=4 lbatch=2 smoke=(--steps 2 --peak-n 128 --torch-compile off)
fi
mkdir -p "$out"
if [ ${#smoke[@]} = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mmjax_site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/mmjax_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$out/nvidia-smi.csv" 2>&1
bench() {  # bench TIMEOUT_S NAME ARGS...: one run.py call, its log beside its results
  local limit=$1 name=$2
  shift 2
  timeout "$limit" python3 experiments/benchmarks/run.py --steps 10 --out "$out" --tag "part$part" "$@" \
    "${smoke[@]}" 2>&1 | tee "$out/$name.log"
}
case "$part" in
  1)
    # in order of importance: a variant is prepared only while the budget lasts (open_clip goes first)
    bench 360 clip --model $clip --batch $batch --compare-torch --budget-s 170 \
      --levers bf16+attn_cudnn,bf16+attn_cudnn@$big,bf16
    bench 150 llava --model $llava --batch $lbatch --budget-s 60 --levers bf16+attn_cudnn,bf16
    ;;
  2)
    bench 480 clip --model $clip --batch $batch --budget-s 300 \
      --levers bf16+attn_cudnn,baseline,bf16+attn_cudnn+remat_dots,bf16+attn_cudnn+remat_full,bf16+attn_cudnn+scan,bf16+attn_cudnn+no_donate,bf16+attn_cudnn+xla_gpu_flags
    ;;
  *)
    echo "usage: $0 fetch | 1 [OUTDIR] | 2 [OUTDIR]" >&2
    exit 2
    ;;
esac
