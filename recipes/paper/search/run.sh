#!/usr/bin/env bash
# The protocol search (issue 20), setting by setting across its four recipes, so a
# partial search covers whole settings: GPT-2's init first (the literal protocol's
# nn.Linear init with the scalings at 1e-3 is results/paper/), then nn.Linear's.
# Resumable: run it again to finish.
#   JOBS=2 bash recipes/paper/search/run.sh        (from the repository root)
set -euo pipefail
JOBS=${JOBS:-1}
PROBE=${PROBE:-probe}
for init in gpt2 torch; do
  for s in 0.01 0.03 0.1 0.003 0.001; do
    for r in aba_vs_abb same_different copy majority; do
      variants=$(grep -oE "^  [^ :]+_ab${s}_${init}:" "recipes/paper/search/$r.yaml" \
        | tr -d ' :' | paste -sd, -)
      $PROBE sweep "recipes/paper/search/$r.yaml" --out "results/paper/search/$r" \
        --variants "$variants" --resume --jobs "$JOBS"
    done
  done
done
