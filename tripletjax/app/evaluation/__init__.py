"""Evaluation: embeddings ranked as a retrieval system, pairs scored for verification."""
