# Seeds 2 and 3 of the 21k ablation (run inside benchmarks/out/ablation21k after bench_ablation.py run ...)
L=/work/main/.venv/bin/leader
export LEADER_HARDWARE__THREADS=1
for s in 2 3; do
  $L train student --config leader.toml -q --set student.seed=$s --out runs/student_s$s > logs/student_s$s.log 2>&1 &
  LEADER_DISTILL__KD_TARGET=logits $L distill --config leader.toml -q --no-align --set student.seed=$s --out runs/kd_logits_s$s > logs/kd_logits_s$s.log 2>&1
  wait
  $L distill --config leader.toml -q --no-align --set student.seed=$s --out runs/kd_only_s$s > logs/kd_only_s$s.log 2>&1
done
echo done > logs/seeds.done
