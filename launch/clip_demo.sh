# Patho-CLIP's part of launch/demo.sh (sourced by it with --clip: CFG, RUN, PR, FORCE,
# OVERRIDES and `stage` come from there).
stage clip-data "$RUN/clip_data" -- "${PR[@]}" clip-data --config $CFG $FORCE "${OVERRIDES[@]}"
stage "clip-eval (untrained)" "$RUN/clip_eval/untrained.json" -- "${PR[@]}" clip-eval --config $CFG --untrained \
  run.progress=false "${OVERRIDES[@]}"
stage clip "$RUN/checkpoints/clip" -- "${PR[@]}" clip --config $CFG $FORCE run.progress=false "${OVERRIDES[@]}"
stage clip-eval "$RUN/clip_eval/clip.json" -- "${PR[@]}" clip-eval --config $CFG run.progress=false "${OVERRIDES[@]}"
echo
.venv/bin/python - "$RUN/clip_eval/untrained.json" "$RUN/clip_eval/clip.json" <<'PY'
import json, sys
rows = [("untrained", json.load(open(sys.argv[1]))), ("trained", json.load(open(sys.argv[2])))]
zs = rows[1][1]["zero_shot"]
print(f"Patho-CLIP on {rows[1][1]['pairs']} held-out tiles (slides never seen in training), "
      f"{zs['num_classes']} classes (chance {1 / zs['num_classes']:.3f}; R@5 chance {5 / rows[1][1]['pairs']:.3f}):")
print(f"  {'model':10s} {'zero-shot acc':>13s} {'balanced':>9s} {'img→txt R@5':>12s} {'txt→img R@5':>12s}")
for name, r in rows:
    z, q = r["zero_shot"], r["retrieval"]
    print(f"  {name:10s} {z['accuracy']:13.3f} {z['balanced_accuracy']:9.3f} {q['image_to_text_R@5']:12.3f} "
          f"{q['text_to_image_R@5']:12.3f}")
PY
echo
echo "[demo] Patho-CLIP finished in $((SECONDS - T0))s; confusion matrix: $RUN/clip_eval/clip_confusion.png"
