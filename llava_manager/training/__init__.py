"""Training a patched model the LLaVA-OneVision way on the HF Trainer: data, packing, sampling, engines, resume."""
