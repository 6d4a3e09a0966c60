"""Scoring a patched model with lmms-eval: the registered model class, its manifest and the report of scores."""
