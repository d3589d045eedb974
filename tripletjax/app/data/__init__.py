"""Training data on the host: datasets by name, batch samplers, augmentations."""
