"""The training loop: steps, checkpoints and preemption."""
