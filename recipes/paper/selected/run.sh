#!/usr/bin/env bash
# The selected protocol's grids (base.yaml here: the matched protocol + model selection
# on the validation split), each with --until-n-star. Resumable: run it again (from the
# repository root) to finish what a kill left.
#   JOBS=1 bash recipes/paper/selected/run.sh
set -euo pipefail
JOBS=${JOBS:-2}
PROBE=${PROBE:-probe}
for figure in same_different aba_vs_abb majority copy; do
  $PROBE sweep "recipes/paper/selected/$figure.yaml" --out "results/paper/selected/$figure" \
    --until-n-star --resume --jobs "$JOBS"
done
