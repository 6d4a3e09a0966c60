"""The embedded default task: coloured shapes on jittered backgrounds, a tiny model sized for them, and the
held-out scoring that proves a run learnt (`python -m llava_manager.synthetic.score DIR`)."""
