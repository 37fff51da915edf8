"""Helpers shared by the tests and the benchmarks (``bench`` imports them): the one free-port helper
(``net``) and the one CT-series writer (``ct_series``)."""
