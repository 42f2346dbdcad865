#!/usr/bin/env bash
# The GPU check of issue 4, as one prepared script for a lent GPU machine (H100/H200):
#  1. LoRA training throughput of a random LLaMA-7B-shaped model (bf16, gradient checkpointing, seq 1024);
#  2. our actual `leader train teacher` for a few steps on a random 7B checkpoint, on the bundled demo.
# Results go to $OUT (default benchmarks/out/gpu). Wheels for packages the machine lacks may sit in .whl/.
set -u
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"

echo "== 1. LoRA throughput, LLaMA-7B shape"
timeout 260 python3 benchmarks/gpu_teacher.py --out "$OUT/gpu_teacher.json" 2>&1 | tee "$OUT/gpu_teacher.log" | grep -v Warning

echo "== 2. leader train teacher on a random 7B checkpoint"
t0=$(date +%s)
python3 benchmarks/make_random_llama.py /tmp/llama7b 2>&1 | tail -1
WD=/tmp/wd7b; mkdir -p $WD
cat > $WD/leader.toml <<TOML
[hardware]
device = "cuda"
precision = "bf16"
[teacher]
base_model = "/tmp/llama7b"
max_steps = 8
eval_every = 4
batch_size = 4
grad_accum = 2
eval_batch_size = 16
max_length = 1024
gradient_checkpointing = true
TOML
(cd $WD && python3 -m leadercli preprocess -q >/dev/null && timeout 300 python3 -m leadercli train teacher 2>&1 | grep -v Warning | tail -25) | tee "$OUT/train7b.log"
cp $WD/runs/teacher/manifest.json "$OUT/manifest7b.json" 2>/dev/null
cp $WD/runs/teacher/train_log.jsonl "$OUT/train7b_log.jsonl" 2>/dev/null
echo "part 2 took $(( $(date +%s) - t0 )) s"
