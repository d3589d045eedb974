"""The integer sort keys of `tripletjax.mining.keys`."""

from tripletjax.mining import keys


def test_rank_key_limit_fits_uint32():
  limit = keys.RANK_KEY_MAX_COLUMNS
  assert 2 * limit * limit <= 2**32 < 2 * (limit + 1) * (limit + 1)
