#!/usr/bin/env bash
# The candidate protocol's grids (base.yaml here), each with --until-n-star. Resumable:
# run it again (from the repository root) to finish what a kill left.
#   JOBS=2 bash recipes/paper/candidate/run.sh
set -euo pipefail
JOBS=${JOBS:-2}
PROBE=${PROBE:-probe}
for figure in same_different aba_vs_abb majority copy; do
  $PROBE sweep "recipes/paper/candidate/$figure.yaml" --out "results/paper/candidate/$figure" \
    --until-n-star --resume --jobs "$JOBS"
done
