#!/usr/bin/env bash
# The protocol search with model selection (issue 20): ../run.sh's settings, each run
# under the selected protocol (keep_best), setting by setting across the four recipes,
# so a partial search covers whole settings. The order puts first the settings the
# unselected search left closest (lr 0.1: copy + VO at the paper's 16, its + KQ rows not
# monotone in n), then the matched protocol's (0.01, gpt2) for comparison, then the rest.
# Resumable: run it again to finish.
#   JOBS=1 bash recipes/paper/search/selected/run.sh        (from the repository root)
set -euo pipefail
JOBS=${JOBS:-1}
PROBE=${PROBE:-probe}
for setting in 0.1_torch 0.1_gpt2 0.01_gpt2 0.03_gpt2 0.03_torch 0.01_torch \
  0.003_gpt2 0.003_torch 0.001_gpt2 0.001_torch; do
  for r in aba_vs_abb same_different copy majority; do
    variants=$(grep -oE "^  [^ :]+_ab${setting}:" "recipes/paper/search/$r.yaml" \
      | tr -d ' :' | paste -sd, -)
    $PROBE sweep "recipes/paper/search/selected/$r.yaml" --out "results/paper/search_selected/$r" \
      --variants "$variants" --resume --jobs "$JOBS"
  done
done
