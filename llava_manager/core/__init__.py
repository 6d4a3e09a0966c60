"""The method itself: the SAUM managers, the config, patching a model and saving or loading what it learned."""
