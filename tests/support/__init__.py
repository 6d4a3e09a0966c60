"""What the tests share: tiny models of each family, the independent references, checkpoints laid out like
the published ones, subprocess helpers."""
