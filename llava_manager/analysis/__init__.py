"""The paper's analyses (aggregation weights, layer similarity, attention entropy and head diversity, SigLIP
attention distance) as functions and as `python -m llava_manager.analysis <name>` commands that draw figures."""
