"""Reading trained weights: per-head identity (diagonal) scores and their plots."""

# The names of attn_diagonal's scores (probe.analysis.diagonal), here without torch so
# `probe diagonal --help` lists them at once.
MATRICES = ("qk", "ov")
SCORES = (
    "trace",
    "fro",
    "a_star",
    "cos_identity",
    "cos_identity_rel",
    "diag_energy",
    "copying_score",
)
EFFECTIVE_SCORES = ("trace", "fro", "a_star", "cos_identity", "diag_energy", "copying_score")
# linear_probe's readout positions and controls (probe.analysis.linear_probe), here for
# `probe linear-probe --help` likewise.
POSITIONS = ("readout", "mean")
CONTROLS = ("random", "shuffle")
