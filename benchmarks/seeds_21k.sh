# Issue 10 item 3: every distillation variant and the recency student at student.seed 42 / 2 / 3 on the 21k set.
# Run inside the ablation work folder after `bench_ablation.py run --work benchmarks/out/ablation21k --patients 34000
# --seed 7 --teacher-max-steps 0 --teacher-eval-every 1 --only generate,preprocess,popularity,student,teacher`
# (that gives runs/teacher and runs/student = seed 42), e.g. `cd benchmarks/out/ablation21k && bash ../../seeds_21k.sh`.
# Runs that already have a manifest are skipped; two at a time, one thread each. Table:
# python benchmarks/bench_ablation.py seeds --work benchmarks/out/ablation21k --rows "student=student,student_s2,student_s3;…"
L=${LEADER:-leader}
export LEADER_HARDWARE__THREADS=1
job() { name=$1; shift; [ -f runs/$name/manifest.json ] || "$@" --config leader.toml -q --out runs/$name > logs/$name.log 2>&1; }
R0="--set student.recency=0"  # the reference student architecture (the default became 10 afterwards)
for s in 42 2 3; do
  [ $s = 42 ] || job student_s$s $L train student $R0 --set student.seed=$s &
  job kd_only_s$s $L distill --no-align $R0 --set distill.kd_target=features --set student.seed=$s
  wait
  job kd_logits_s$s $L distill --no-align $R0 --set distill.kd_target=logits --set student.seed=$s &
  job align_only_s$s $L distill --no-kd $R0 --set student.seed=$s
  wait
  job std_s$s $L distill $R0 --set distill.kd_target=features --set distill.standardize=true --set student.seed=$s &
  job kd_align_s$s $L distill $R0 --set distill.kd_target=features --set student.seed=$s
  wait
  job lkd_align_s$s $L distill $R0 --set distill.kd_target=logits --set student.seed=$s &
  job rec_s$s $L train student --set student.recency=10 --set student.seed=$s
  wait
  job rec_lkd_s$s $L distill --no-align --set distill.kd_target=logits --set student.recency=10 --set student.seed=$s &
  job def_s$s $L distill --set student.seed=$s  # today's defaults: recency 10, kd_target auto (logits here), alignment
  wait
done
