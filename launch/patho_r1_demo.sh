# Patho-R1's part of launch/demo.sh (sourced by it with --patho-r1: CFG, RUN, PR, FORCE,
# OVERRIDES and `stage` come from there): vl-data → vl-init → vl-eval (untrained) →
# vl-train pretrain / sft / grpo, each followed by vl-eval (true vs shuffled images).
stage vl-data "$RUN/vl_data" -- "${PR[@]}" vl-data --config $CFG $FORCE "${OVERRIDES[@]}"
stage vl-init "$RUN/vl_init" -- "${PR[@]}" vl-init --config $CFG $FORCE "${OVERRIDES[@]}"
stage "vl-eval (untrained)" "$RUN/vl_eval/untrained.json" -- "${PR[@]}" vl-eval --config $CFG \
  run.progress=false "${OVERRIDES[@]}"
for s in pretrain sft grpo; do
  stage "vl-train $s" "$RUN/checkpoints/vl_$s" -- "${PR[@]}" vl-train --config $CFG --stage $s $FORCE \
    run.progress=false "${OVERRIDES[@]}"
  stage "vl-eval $s" "$RUN/vl_eval/$s.json" -- "${PR[@]}" vl-eval --config $CFG --stage $s \
    run.progress=false "${OVERRIDES[@]}"
done
echo
.venv/bin/python -m pathreasoner_jax.vl.evaluate "$RUN/vl_eval"
echo
echo "[demo] Patho-R1 finished in $((SECONDS - T0))s; per-category results: $RUN/vl_eval/*.json"
