"""The held-out labelling set's mix of anatomical variants."""

from __future__ import annotations

import numpy as np

from service.offline.evaluation.labelling_set import case_overrides


def test_labelling_set_draws_every_variant_in_both_halves() -> None:
    """Whole fields and targeted reconstructions each get 11 and 13 rib pairs and both lumbosacral variants (until
    session 8 the whole half drew only 11 rib pairs and lumbarised S1s, the targeted half only the others)."""
    drawn: dict[bool, set[tuple[str, object]]] = {True: set(), False: set()}
    for i in range(60):
        o = case_overrides(i, np.random.default_rng([0, i, 1]))
        drawn[i % 2 == 1] |= {("rib_pairs", o["rib_pairs"]), ("lumbar_variant", o["lumbar_variant"])}
    for narrow in (True, False):
        assert {("rib_pairs", 11), ("rib_pairs", 13), ("lumbar_variant", "lumbarised_s1"),
                ("lumbar_variant", "sacralised_l5")} <= drawn[narrow], narrow
