"""Vectorised NumPy multi-similarity, NT-Xent and SupCon losses with analytic gradients: the
benchmark baseline of the losses of cosine similarities (pytorch-metric-learning's defaults:
alpha 2, beta 50, base 0.5, epsilon 0.1 with the miner; NT-Xent temperature 0.07; SupCon 0.1).

Float32 like the JAX side, whole [B, B] matrices, no statistics, and none of
pytorch-metric-learning's corner cases beyond "no positive or no negative pair gives 0". Each
loss is a function of S = U U^T, U the L2-normalised rows of X; with G = dL/dS,
dL/dU = (G + G^T) U and dL/dX = (dL/dU - U rowsum(dL/dU * U)) / |x|. Imports nothing from
`tripletjax` (agreement is that of two implementations: tests/benchmarks/test_numpy_similarity.py).

Every loss `name` has `name(labels, embeddings, margin=None)` (the margin is unused: the
benchmark passes one to every loss) returning a float, and `name_and_grad(...)` returning
`(loss, d loss / d embeddings)`.
"""

from __future__ import annotations

import numpy as np


def _similarities(labels, embeddings):
  x = np.ascontiguousarray(embeddings, dtype=np.float32)
  norms = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
  unit = x / norms
  same = np.asarray(labels)[:, None] == np.asarray(labels)[None, :]
  positive = same.copy()
  np.fill_diagonal(positive, False)
  return unit, norms, unit @ unit.T, positive, ~same


def _embedding_gradient(unit, norms, g):
  d_unit = (g + g.T) @ unit
  return (d_unit - unit * np.sum(d_unit * unit, axis=1, keepdims=True)) / norms


def _masked_exp(x, mask, shift):
  """exp(x - shift) where mask, else 0 (shift [B, 1])."""
  return np.where(mask, np.exp(np.where(mask, x - shift, 0.0)), np.float32(0.0))


def _multi_similarity_parts(labels, embeddings, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1):
  unit, norms, s, positive, negative = _similarities(labels, embeddings)
  hardest_negative = np.max(np.where(negative, s, -np.inf), axis=1, keepdims=True)
  hardest_positive = np.min(np.where(positive, s, np.inf), axis=1, keepdims=True)
  empty = not positive.any() or not negative.any()
  keep_positive = positive & (s - np.float32(epsilon) < hardest_negative) & (not empty)
  keep_negative = negative & (s + np.float32(epsilon) > hardest_positive) & (not empty)
  loss, g = 0.0, np.zeros_like(s)
  for weight, sign, logits, keep in ((alpha, -1.0, alpha * (base - s), keep_positive),
                                     (beta, 1.0, beta * (s - base), keep_negative)):
    shift = np.maximum(np.max(np.where(keep, logits, -np.inf), axis=1, keepdims=True), 0.0)
    terms = _masked_exp(logits, keep, shift)
    total = terms.sum(axis=1, keepdims=True) + np.exp(-shift)
    loss += float(np.sum(np.log(total) + shift, dtype=np.float64)) / weight
    # d/ds of (1/w) log(1 + sum exp(+-w (s - base))) = +-exp(.) / (1 + sum).
    g += sign * terms / total
  batch = s.shape[0]
  if keep_positive.sum() <= 1 and keep_negative.sum() <= 1:
    return 0.0, unit, norms, np.zeros_like(s)
  return loss / batch, unit, norms, g / batch


def _ntxent_parts(labels, embeddings, temperature=0.07):
  unit, norms, s, positive, negative = _similarities(labels, embeddings)
  num_positive = int(positive.sum())
  if num_positive == 0 or not negative.any():
    return 0.0, unit, norms, np.zeros_like(s)
  x = s / np.float32(temperature)
  shift = np.max(np.where(negative, x, -np.inf), axis=1, keepdims=True)
  shift = np.where(np.isfinite(shift), shift, 0.0)
  negatives = _masked_exp(x, negative, shift)
  log_negatives = np.log(negatives.sum(axis=1, keepdims=True)) + shift  # -inf: no negative.
  # Per positive pair: softplus(lse_n - x_ap); its derivative in x_ap is -sigmoid(lse_n - x_ap).
  z = log_negatives - x
  pair_loss = np.logaddexp(np.float32(0.0), z)
  weight = np.where(positive, 1.0 / (1.0 + np.exp(-z)), 0.0)  # sigmoid(z), per pair.
  loss = float(np.sum(np.where(positive, pair_loss, 0.0), dtype=np.float64)) / num_positive
  # d lse_n / d x_an = softmax over a's negatives; each of a's positive pairs adds its weight.
  softmax = negatives / np.maximum(negatives.sum(axis=1, keepdims=True), np.float32(1e-30))
  g = (softmax * weight.sum(axis=1, keepdims=True) - weight) / (num_positive * temperature)
  return loss, unit, norms, g.astype(np.float32)


def _supcon_parts(labels, embeddings, temperature=0.1):
  unit, norms, s, positive, negative = _similarities(labels, embeddings)
  if not positive.any() or not negative.any():
    return 0.0, unit, norms, np.zeros_like(s)
  x = s / np.float32(temperature)
  others = positive | negative
  shift = np.max(np.where(others, x, -np.inf), axis=1, keepdims=True)
  exps = _masked_exp(x, others, shift)
  log_denominator = np.log(exps.sum(axis=1, keepdims=True)) + shift
  count = positive.sum(axis=1, keepdims=True)
  per_anchor = -np.sum(np.where(positive, x - log_denominator, 0.0), axis=1,
                       keepdims=True) / np.maximum(count, 1)
  counted = per_anchor > 0
  num_counted = int(counted.sum())
  if num_counted == 0:
    return 0.0, unit, norms, np.zeros_like(s)
  loss = float(np.sum(per_anchor[counted], dtype=np.float64)) / num_counted
  softmax = exps / exps.sum(axis=1, keepdims=True)
  g = (softmax - positive / np.maximum(count, 1)) * counted / (num_counted * temperature)
  return loss, unit, norms, g.astype(np.float32)


def _forward(parts):
  return lambda labels, embeddings, margin=None: parts(labels, embeddings)[0]


def _forward_and_backward(parts):
  def loss_and_grad(labels, embeddings, margin=None):
    loss, unit, norms, g = parts(labels, embeddings)
    return loss, _embedding_gradient(unit, norms, g).astype(np.float32)
  return loss_and_grad


FORWARD = {"multi_similarity": _forward(_multi_similarity_parts),
           "ntxent": _forward(_ntxent_parts),
           "supcon": _forward(_supcon_parts)}
FORWARD_AND_BACKWARD = {"multi_similarity": _forward_and_backward(_multi_similarity_parts),
                        "ntxent": _forward_and_backward(_ntxent_parts),
                        "supcon": _forward_and_backward(_supcon_parts)}
