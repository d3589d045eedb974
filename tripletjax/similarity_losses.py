"""Losses of cosine similarities: multi-similarity, NT-Xent and SupCon.

Each equals pytorch-metric-learning 2.9's loss of the same name with its default
`CosineSimilarity` (the embeddings are L2-normalised, `s_ij = <x_i, x_j> / (|x_i| |x_j|)`) and
default reducer, on a labelled batch: every same-label pair (i, j), i != j, is a positive,
every different-label pair a negative.

  * `multi_similarity_loss` (Wang et al., 2019; `MultiSimilarityLoss(alpha, beta, base)`, with
    `mining=True` after `MultiSimilarityMiner(epsilon)`): per anchor a,
    (1/alpha) log(1 + sum_p exp(-alpha (s_ap - base))) + (1/beta) log(1 + sum_n exp(beta (s_an - base))),
    averaged over all anchors.
  * `ntxent_loss` (Chen et al., 2020; `NTXentLoss(temperature)`): per positive pair (a, p),
    -log(exp(s_ap / t) / (exp(s_ap / t) + sum_n exp(s_an / t))), averaged over positive pairs.
  * `supcon_loss` (Khosla et al., 2020; `SupConLoss(temperature)`): per anchor,
    -mean_p (s_ap / t - log sum_{j != a} exp(s_aj / t)), averaged over the anchors whose loss
    is non-zero (`AvgNonZeroReducer`).

A batch without positive pairs, or without negative pairs, gives a loss of exactly 0 (with a
zero gradient), as in pytorch-metric-learning; `num_positive_pairs` in the statistics says so.
pytorch-metric-learning also returns 0 when the pairs it keeps are at most one positive and
at most one negative pair (`GenericPairLoss`); so do these losses. Every log-sum-exp is
shifted by its maximum, so float32 and bfloat16 inputs (computed in float32) never overflow.

The losses compute, from the labels and the cosine similarities of some anchors with their
references (`Pairs`), the loss of those anchors: without a memory the anchors are the batch's
rows (this device's rows under `axis_name`) and the references the whole batch; with a
cross-batch memory (`tripletjax.memory`) the references are the memory. Memory is O(B^2)
(O(B^2 / N) per device under `axis_name`).

References:
  Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning",
  CVPR 2019. Chen et al., "A Simple Framework for Contrastive Learning of Visual
  Representations", ICML 2020. Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from tripletjax import mining
from tripletjax import validation
from tripletjax.finite import finish, poison_unless_finite, safe_mean
from tripletjax.mining import shards

# torch.nn.functional.normalize's guard: x / max(|x|, eps), so a zero row stays zero.
NORMALIZE_EPS = 1e-12


class Pairs(NamedTuple):
  """Some anchors and their references, as the similarity losses see them."""
  similarity: jax.Array      # [C, R] float32 cosine similarities of the anchors to the references.
  positive: jax.Array        # [C, R] bool: same label, a valid reference, not the anchor itself.
  negative: jax.Array        # [C, R] bool: another label, a valid reference.
  # [C, R] bool: the positives the multi-similarity miner compares with. With a memory it
  # also holds the anchor's own slot, as in pytorch-metric-learning, whose `CrossBatchMemory`
  # removes the self-comparisons only after mining.
  miner_positive: jax.Array
  num_anchors: int           # The anchors of the whole batch, over every device.
  axis_name: str | None      # The mesh axis the sums are totalled over; None: one device.


class Batch(NamedTuple):
  """A checked batch: the whole batch gathered over `axis_name`, and this device's anchors."""
  labels: jax.Array        # [B] int labels.
  embeddings: jax.Array    # [B, D] float32.
  anchor_index: jax.Array  # [C] int32: this device's anchors (all B rows without a mesh axis).
  dtype: Any               # The input dtype: the loss comes back in it.
  finite: jax.Array        # bool scalar: every embedding entry (on every device) is finite.
  axis_name: str | None


def prepare(labels, embeddings, axis_name: str | None = None) -> Batch:
  """Checks the inputs and, with `axis_name` (inside `jax.shard_map`), gathers the batch split
  over that mesh axis: device i holds rows [i b, (i + 1) b) and mines those anchors."""
  labels, embeddings = validation.check_labels_and_embeddings(labels, embeddings)
  (floats,), finite = poison_unless_finite(embeddings.astype(jnp.float32), axis_name=axis_name)
  anchor_index = jnp.arange(labels.shape[0], dtype=jnp.int32)
  if axis_name is not None and shards.axis_size(axis_name) > 1:
    anchor_index = mining.shard_anchors(labels.shape[0], axis_name).index
    labels = shards.gather(labels, axis_name)
    floats = shards.gather(floats, axis_name)
  return Batch(labels, floats, anchor_index, embeddings.dtype, finite, axis_name)


def normalize(x: jax.Array) -> jax.Array:
  """Rows of `x` [N, D] divided by max(|x|, 1e-12), as `torch.nn.functional.normalize`; a zero
  row stays zero with a finite (zero) gradient."""
  squared = jnp.sum(x * x, axis=1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(squared, NORMALIZE_EPS**2))


def cosine_similarity(anchors: jax.Array, references: jax.Array) -> jax.Array:
  """[C, R] cosine similarities of the rows of `anchors` [C, D] and `references` [R, D]."""
  # HIGHEST: on GPUs the default matmul precision is TF32, 1e-3 off.
  return jnp.matmul(normalize(anchors), normalize(references).T,
                    precision=jax.lax.Precision.HIGHEST)


def batch_pairs(batch: Batch) -> Pairs:
  """The pairs of this device's anchors with every example of the batch."""
  similarity = cosine_similarity(batch.embeddings[batch.anchor_index], batch.embeddings)
  same = batch.labels[batch.anchor_index][:, None] == batch.labels[None, :]
  column = jax.lax.broadcasted_iota(jnp.int32, same.shape, 1)
  positive = same & (column != batch.anchor_index[:, None])
  return Pairs(similarity, positive, ~same, positive, batch.labels.shape[0], batch.axis_name)


def masked_logsumexp(x: jax.Array, mask: jax.Array, add_one: bool = False):
  """(log sum_{j: mask} exp(x_j) per row, whether the row has any masked entry).

  With `add_one`, log(1 + sum ...) (a zero logit added). Shifted by the row maximum (held
  constant, as it cancels), so nothing overflows; rows without masked entries give 0 with a
  zero gradient, as pytorch-metric-learning's `logsumexp` (which fills them with 0).
  """
  has_any = jnp.any(mask, axis=1)
  peak = jnp.max(jnp.where(mask, x, -jnp.inf), axis=1, keepdims=True)
  if add_one:
    peak = jnp.maximum(peak, 0.0)
  peak = jax.lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
  terms = jnp.where(mask, jnp.exp(jnp.where(mask, x - peak, 0.0)), 0.0)
  total = jnp.sum(terms, axis=1)
  if add_one:
    total = total + jnp.exp(-peak[:, 0])
  # The largest term is exp(0) = 1, so the log is of a number >= 1 on every row that counts.
  value = jnp.log(jnp.where(has_any, total, 1.0)) + peak[:, 0]
  return jnp.where(has_any, value, 0.0), has_any


def _count(mask, axis_name):
  return shards.total(jnp.sum(mask, dtype=jnp.int32), axis_name)


def _total(x, axis_name):
  return shards.total(jnp.sum(x), axis_name)


def _too_few_pairs(num_positive, num_negative):
  """pytorch-metric-learning's `GenericPairLoss` returns 0 when it has at most one positive
  and at most one negative pair (or none of either for the losses that need both)."""
  return (num_positive <= 1) & (num_negative <= 1)


def _similarity_stats(pairs: Pairs) -> dict:
  """Mean similarity of the positive and of the negative pairs (0 without any)."""
  s, axis_name = pairs.similarity, pairs.axis_name
  return {
      "mean_positive_similarity": safe_mean(_total(jnp.where(pairs.positive, s, 0.0), axis_name),
                                            _count(pairs.positive, axis_name)),
      "mean_negative_similarity": safe_mean(_total(jnp.where(pairs.negative, s, 0.0), axis_name),
                                            _count(pairs.negative, axis_name)),
  }


def multi_similarity_miner(pairs: Pairs, epsilon) -> tuple[jax.Array, jax.Array]:
  """The pairs `MultiSimilarityMiner(epsilon)` keeps: [C, R] bool (positives, negatives).

  A positive (a, p) is kept when s_ap - epsilon < max_n s_an, a negative (a, n) when
  s_an + epsilon > min_p s_ap (strict, both). As in pytorch-metric-learning, nothing is kept
  when the whole batch has no positive or no negative pair.
  """
  s = pairs.similarity
  hardest_negative = jnp.max(jnp.where(pairs.negative, s, -jnp.inf), axis=1, keepdims=True)
  hardest_positive = jnp.min(jnp.where(pairs.miner_positive, s, jnp.inf), axis=1, keepdims=True)
  keep_positive = pairs.positive & (s - epsilon < hardest_negative)
  keep_negative = pairs.negative & (s + epsilon > hardest_positive)
  any_pairs = ((_count(pairs.miner_positive, pairs.axis_name) > 0)
               & (_count(pairs.negative, pairs.axis_name) > 0))
  return keep_positive & any_pairs, keep_negative & any_pairs


def multi_similarity_of_pairs(pairs: Pairs, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1,
                              mining: bool = True):
  """(loss, stats) of the multi-similarity loss of `pairs` (see `multi_similarity_loss`)."""
  check_multi_similarity_options(alpha, beta, base, epsilon)
  s = pairs.similarity
  if mining:
    positive, negative = multi_similarity_miner(pairs, epsilon)
  else:
    positive, negative = pairs.positive, pairs.negative
  positive_term, _ = masked_logsumexp(alpha * (base - s), positive, add_one=True)
  negative_term, _ = masked_logsumexp(beta * (s - base), negative, add_one=True)
  per_anchor = positive_term / alpha + negative_term / beta
  kept_positive = _count(positive, pairs.axis_name)
  kept_negative = _count(negative, pairs.axis_name)
  loss = _total(per_anchor, pairs.axis_name) / pairs.num_anchors
  loss = jnp.where(_too_few_pairs(kept_positive, kept_negative), 0.0, loss)
  num_positive = _count(pairs.positive, pairs.axis_name)
  num_negative = _count(pairs.negative, pairs.axis_name)
  stats = {
      "num_positive_pairs": num_positive,
      "num_negative_pairs": num_negative,
      "fraction_positive_mined": safe_mean(kept_positive, num_positive),
      "fraction_negative_mined": safe_mean(kept_negative, num_negative),
      **_similarity_stats(pairs),
  }
  return loss, stats


def ntxent_of_pairs(pairs: Pairs, temperature=0.07):
  """(loss, stats) of the NT-Xent loss of `pairs` (see `ntxent_loss`)."""
  validation.check_positive(temperature, "temperature")
  logits = pairs.similarity / temperature
  negatives, has_negative = masked_logsumexp(logits, pairs.negative)
  # -log(e^x / (e^x + sum_n e^n)) = log(1 + exp(lse_n - x)); 0 for an anchor without negatives.
  per_pair = jax.nn.softplus(negatives[:, None] - logits)
  used = pairs.positive & has_negative[:, None]
  num_positive = _count(pairs.positive, pairs.axis_name)
  num_negative = _count(pairs.negative, pairs.axis_name)
  loss = safe_mean(_total(jnp.where(used, per_pair, 0.0), pairs.axis_name), num_positive)
  empty = (num_negative == 0) | _too_few_pairs(num_positive, num_negative)
  loss = jnp.where(empty, 0.0, loss)
  return loss, {"num_positive_pairs": num_positive, "num_negative_pairs": num_negative,
                **_similarity_stats(pairs)}


def supcon_of_pairs(pairs: Pairs, temperature=0.1):
  """(loss, stats) of the SupCon loss of `pairs` (see `supcon_loss`)."""
  validation.check_positive(temperature, "temperature")
  logits = pairs.similarity / temperature
  log_denominator, _ = masked_logsumexp(logits, pairs.positive | pairs.negative)
  log_probability = logits - log_denominator[:, None]
  positives_per_anchor = jnp.sum(pairs.positive, axis=1)
  per_anchor = -safe_mean(jnp.sum(jnp.where(pairs.positive, log_probability, 0.0), axis=1),
                          positives_per_anchor)
  counted = per_anchor > 0.0  # AvgNonZeroReducer: only the anchors with a non-zero loss.
  num_anchors = _count(counted, pairs.axis_name)
  num_positive = _count(pairs.positive, pairs.axis_name)
  num_negative = _count(pairs.negative, pairs.axis_name)
  loss = safe_mean(_total(jnp.where(counted, per_anchor, 0.0), pairs.axis_name), num_anchors)
  empty = (num_positive == 0) | (num_negative == 0) | _too_few_pairs(num_positive, num_negative)
  loss = jnp.where(empty, 0.0, loss)
  return loss, {"num_positive_pairs": num_positive, "num_negative_pairs": num_negative,
                "num_anchors_in_mean": jnp.where(empty, 0, num_anchors),
                **_similarity_stats(pairs)}


def check_multi_similarity_options(alpha, beta, base, epsilon) -> None:
  validation.check_positive(alpha, "alpha")
  validation.check_positive(beta, "beta")
  validation.check_finite(base, "base")
  validation.check_finite(epsilon, "epsilon")


def multi_similarity_loss(labels, embeddings, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1,
                          mining: bool = True, return_stats: bool = False,
                          axis_name: str | None = None):
  """Multi-similarity loss (Wang et al., 2019), as pytorch-metric-learning computes it.

  On cosine similarities s: with `mining`, `MultiSimilarityMiner(epsilon)` first keeps a
  positive (a, p) if s_ap - epsilon < max_n s_an and a negative (a, n) if
  s_an + epsilon > min_p s_ap; then per anchor
  (1/alpha) log(1 + sum_p exp(-alpha (s_ap - base))) + (1/beta) log(1 + sum_n exp(beta (s_an - base)))
  over its kept pairs (0 for an anchor without any), averaged over all B anchors.

  Args:
    labels: [B] integer class ids.
    embeddings: [B, D] float embeddings (normalised here).
    alpha: > 0, the weight of the positive pairs (2.0, pytorch-metric-learning's default).
    beta: > 0, the weight of the negative pairs (50.0).
    base: the similarity both terms are centred on (0.5).
    epsilon: the miner's margin (0.1); unused without `mining`.
    mining: mine the pairs first (`MultiSimilarityLoss` after `MultiSimilarityMiner`), or use
      every pair (`MultiSimilarityLoss` alone).
    return_stats: also return the statistics.
    axis_name: inside `jax.shard_map`, the mesh axis the batch is split over (as for
      `tripletjax.triplet_semihard_loss`): the loss of the whole global batch.

  Returns:
    Scalar loss in the dtype of `embeddings`, or `(loss, stats)` with stats keys
    `num_positive_pairs` and `num_negative_pairs` (the ordered pairs of the batch),
    `fraction_positive_mined`, `fraction_negative_mined` (the fractions of them the miner
    keeps: 1 without mining), `mean_positive_similarity`, `mean_negative_similarity`.
  """
  batch = prepare(labels, embeddings, axis_name)
  loss, stats = multi_similarity_of_pairs(batch_pairs(batch), alpha, beta, base, epsilon,
                                          mining)
  return finish(loss, batch.dtype, stats, return_stats, batch.finite)


def ntxent_loss(labels, embeddings, temperature=0.07, return_stats: bool = False,
                axis_name: str | None = None):
  """NT-Xent (normalised temperature-scaled cross-entropy) loss of a labelled batch, as
  pytorch-metric-learning's `NTXentLoss(temperature)`.

  Every ordered same-label pair (a, p), a != p, is a positive and costs
  -log(exp(s_ap / t) / (exp(s_ap / t) + sum_n exp(s_an / t))) over a's negatives n; the loss
  is the mean over positive pairs, 0 when the batch has no positive or no negative pair.

  Args:
    labels: [B] integer class ids (for SimCLR's two views of each image: the image index).
    embeddings: [B, D] float embeddings (normalised here).
    temperature: > 0 (0.07, pytorch-metric-learning's default).
    return_stats, axis_name: as for `multi_similarity_loss`.

  Returns:
    Scalar loss, or `(loss, stats)` with stats keys `num_positive_pairs`,
    `num_negative_pairs`, `mean_positive_similarity`, `mean_negative_similarity`.
  """
  batch = prepare(labels, embeddings, axis_name)
  loss, stats = ntxent_of_pairs(batch_pairs(batch), temperature)
  return finish(loss, batch.dtype, stats, return_stats, batch.finite)


def supcon_loss(labels, embeddings, temperature=0.1, return_stats: bool = False,
                axis_name: str | None = None):
  """Supervised contrastive loss (Khosla et al., 2020), as pytorch-metric-learning's
  `SupConLoss(temperature)`.

  Per anchor a with positives P(a): -(1/|P(a)|) sum_p (s_ap / t - log sum_{j != a} exp(s_aj / t));
  the loss is the mean over the anchors whose loss is non-zero (anchors without positives have
  none), 0 when the batch has no positive or no negative pair.

  Args:
    labels: [B] integer class ids.
    embeddings: [B, D] float embeddings (normalised here).
    temperature: > 0 (0.1, pytorch-metric-learning's default).
    return_stats, axis_name: as for `multi_similarity_loss`.

  Returns:
    Scalar loss, or `(loss, stats)` with stats keys `num_positive_pairs`,
    `num_negative_pairs`, `num_anchors_in_mean`, `mean_positive_similarity`,
    `mean_negative_similarity`.
  """
  batch = prepare(labels, embeddings, axis_name)
  loss, stats = supcon_of_pairs(batch_pairs(batch), temperature)
  return finish(loss, batch.dtype, stats, return_stats, batch.finite)


# The losses by name, and the function of each that computes it from `Pairs` (the cross-batch
# memory, `tripletjax.memory`, builds its own pairs).
LOSSES = {
    "multi_similarity": multi_similarity_loss,
    "ntxent": ntxent_loss,
    "supcon": supcon_loss,
}
OF_PAIRS = {
    "multi_similarity": multi_similarity_of_pairs,
    "ntxent": ntxent_of_pairs,
    "supcon": supcon_of_pairs,
}
