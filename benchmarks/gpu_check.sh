#!/usr/bin/env bash
# The GPU checks in one script (about 10 minutes on one GPU; nothing else needs a GPU):
#   1. the cuda-marked tests (AMP bf16 / fp16 with the scaler, data on the device, channels_last, a one-process
#      NCCL group, the standard suite on CUDA against the CPU);
#   2. a PGD-AT LeNet-5 trained on the GPU (MNIST-5k is bundled: no download), then the evaluation benchmark
#      (the standard suite vs torchattacks' AutoAttack composition) with --device cuda;
#   3. the training-options benchmark (channels_last, torch.compile, AMP) with --device cuda on CIFAR-10-shaped
#      tensors (or the real CIFAR-10 when its files are on disk).
# Writes docs/results/performance_gpu.md with the device name and every command's output.
#   bash benchmarks/gpu_check.sh            # from the repository root, after `make setup`
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${GPU_CHECK_DIR:-runs/gpu_check}
DOC=${GPU_CHECK_DOC:-docs/results/performance_gpu.md}
mkdir -p "$WORK"
device=$("$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0))")
echo "device: $device"

section() { echo; echo "## $1"; echo; echo '```'; }
{
  echo "# robustlab on a GPU: $device"
  echo
  echo "Produced by \`bash benchmarks/gpu_check.sh\` on $(date -u +%Y-%m-%d) (torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)'))."
  section "cuda-marked tests: $PY -m pytest -q -m cuda tests/test_cuda.py"
  "$PY" -m pytest -q -m cuda tests/test_cuda.py 2>&1 | tail -n 15
  echo '```'
  section "a PGD-AT LeNet-5 on the GPU: robustlab train --config robustlab/recipes/demo_pgd_at.toml"
  "$PY" -m robustlab.cli train --config robustlab/recipes/demo_pgd_at.toml --set run.device='"cuda"' \
      --set run.progress=false --set "run.out_dir=\"$WORK/pgd_at\"" 2>&1 | tail -n 4
  echo '```'
  section "evaluation speed: benchmarks/eval_speed.py --checkpoint $WORK/pgd_at --device cuda"
  "$PY" benchmarks/eval_speed.py --checkpoint "$WORK/pgd_at" --device cuda --out "$WORK/eval_speed.md" 2>&1 | tail -n 25
  echo '```'
  section "training options: benchmarks/training_options.py --device cuda --images 12800"
  "$PY" benchmarks/training_options.py --device cuda --images 12800 2>&1 | tail -n 20
  echo '```'
} | tee "$WORK/gpu_check.log"
cp "$WORK/gpu_check.log" "$DOC"
echo "wrote $DOC"
