#!/usr/bin/env bash
# Issue 10 item 6 as one prepared script for a lent GPU machine: the MiniLM teacher with LoRA for EPOCHS (≥ 3)
# epochs on the ~21k synthetic set, then `leader distill` from it (defaults: kd_target auto = feature KD for a
# fine-tuned backbone; and logit KD), and the no-KD student, all on the GPU; tokens/s from the manifests.
# Results (summary JSON + manifests + logs) go to $OUT (default benchmarks/out/gpu10). CPU dry run:
#   PY=.venv/bin/python DEVICE=cpu PATIENTS=600 EPOCHS=0.05 STUDENT_EPOCHS=1 OUT=/tmp/gpu10 bash benchmarks/gpu_issue10.sh
set -u
OUT=${OUT:-benchmarks/out/gpu10}
DEVICE=${DEVICE:-cuda}
PATIENTS=${PATIENTS:-34000}   # → 21,238 patients after preprocess (seed 7)
EPOCHS=${EPOCHS:-3}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-10}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
PY=${PY:-python3}
L="$PY -m leadercli"
WD=${WD:-/tmp/gpu10-wd}
rm -rf "$WD"; mkdir -p "$WD"
t0=$(date +%s)
$PY benchmarks/generate.py raw --layout mimic4 --patients "$PATIENTS" --out "$WD/raw" --seed 7 > "$OUT/generate.log" 2>&1 || exit 1
cat > "$WD/leader.toml" <<TOML
[data]
source = "mimic4"
[paths]
raw = "$WD/raw"
artifact = "$WD/data"
[hardware]
device = "$DEVICE"
precision = "$( [ "$DEVICE" = cuda ] && echo bf16 || echo fp32 )"
[student]
batch_size = 64
epochs = $STUDENT_EPOCHS
patience = 5
[teacher]
epochs = $EPOCHS
batch_size = 16
grad_accum = 1
max_length = 128
eval_batch_size = 128
TOML
cd "$WD" || exit 1
step() { name=$1; shift; s=$(date +%s); timeout 540 "$@" > "$OUT/$name.log" 2>&1; rc=$?; echo "$name rc $rc $(( $(date +%s) - s )) s" | tee -a "$OUT/steps.txt"; }
step preprocess $L preprocess -q
step teacher $L train teacher -q
step distill_auto $L distill -q --out runs/distill_auto
step distill_logits $L distill -q --set distill.kd_target=logits --out runs/distill_logits
step student $L train student -q --out runs/student
for r in teacher distill_auto distill_logits student; do
  [ -f runs/$r/manifest.json ] && cp runs/$r/manifest.json "$OUT/manifest_$r.json"
done
[ -f runs/teacher/train_log.jsonl ] && cp runs/teacher/train_log.jsonl "$OUT/teacher_train_log.jsonl"
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for name in ("teacher", "distill_auto", "distill_logits", "student"):
    p = out / f"manifest_{name}.json"
    if not p.is_file():
        rows[name] = None
        continue
    m = json.loads(p.read_text())
    t = m["metrics"]["test"]
    rows[name] = {
        g: round(t[g]["point"]["prauc"], 4) for g in ("overall", "single", "multi")
    } | {
        "training": {k: m.get("training", {}).get(k) for k in ("steps", "tokens_per_s", "seconds", "device_name", "peak_gpu_memory_gib")}
        if name == "teacher" else None,
        "distill": m.get("distill"),
    }
(out / "summary.json").write_text(json.dumps(rows, indent=1))
print(json.dumps(rows, indent=1))
PY
echo "total $(( $(date +%s) - t0 )) s" | tee -a "$OUT/steps.txt"
