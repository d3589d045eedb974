"""The tests, in folders that mirror the package: tests/X/test_Y.py tests tripletjax/X/Y.py.

Every folder is a package, so test modules import as `tests.<folder>.<module>` (their names
may repeat across folders) and helpers as `from tests.mining import oracle`; pytest puts the
repository root on sys.path.
"""
