"""One train step: how its gradient is computed, over virtual batches, and its optimizer."""
