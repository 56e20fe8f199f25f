#!/usr/bin/env bash
# The matched protocol's grids (issue 20), then the literal protocol's rows at the
# paper's n, each with --until-n-star (a variant stops once its n* is settled).
# Resumable: run it again (from the repository root) to finish what a kill left.
#   JOBS=2 bash recipes/paper/matched/run.sh
set -euo pipefail
JOBS=${JOBS:-2}
PROBE=${PROBE:-probe}
sweep() { $PROBE sweep "$@" --until-n-star --resume --jobs "$JOBS"; }
sweep recipes/paper/matched/same_different.yaml --out results/paper/matched/same_different
sweep recipes/paper/matched/majority.yaml --out results/paper/matched/majority
sweep recipes/paper/matched/copy.yaml --out results/paper/matched/copy
# the literal protocol (recipes/paper/base.yaml) at the paper's n
sweep recipes/paper/same_different.yaml --out results/paper/same_different --variants none
sweep recipes/paper/aba_vs_abb.yaml --out results/paper/aba_vs_abb --variants none,vo,kq,kq,vo
# the MLPs (no scalings, no attention: one protocol) to n = 2048
sweep recipes/paper/aba_vs_abb_mlp.yaml --out results/paper/aba_vs_abb_mlp
# last: the matched aba_vs_abb grid's + VO at n 4096 (3 cells, ~25 min each), which
# cannot change its row's verdict (n* > 2048 is already more than 2x the paper's 1024)
sweep recipes/paper/matched/aba_vs_abb.yaml --out results/paper/matched/aba_vs_abb
