"""Reading trained weights: per-head identity (diagonal) scores and their plots."""
