"""Grids of runs: recipes and sweeps, and the reports made from their results."""
