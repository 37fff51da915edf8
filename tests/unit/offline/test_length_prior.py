"""The length-prior refit (service.offline.evaluation.length_prior) on in-memory pieces: no model, no phantom."""

from __future__ import annotations

import numpy as np
import pytest

from service.offline.evaluation.length_prior import Piece, fit_length_prior, interior_pieces, recording_fine_pieces
from service.segmentation import inference, instances


def test_fit_recovers_one_line_per_vote_group_and_leaves_out_long_pieces() -> None:
    rng = np.random.default_rng(7)
    sections = rng.uniform(250.0, 1300.0, size=60)
    thoracic = [Piece(11.4 + 0.44 * np.sqrt(s) + rng.normal(0.0, 0.5), float(s), 0.9) for s in sections[:30]]
    lumbar = [Piece(34.0 + 0.04 * np.sqrt(s) + rng.normal(0.0, 0.5), float(s), 0.1) for s in sections[30:]]
    merged = [Piece(52.0, 700.0, 0.8)]  # two bodies the fixed prior left uncut: not a body length
    fit = fit_length_prior(thoracic + lumbar + merged)
    assert fit["thoracic"].pieces == 30 and fit["lumbar"].pieces == 30
    assert fit["thoracic"].a == pytest.approx(11.4, abs=1.5) and fit["thoracic"].b == pytest.approx(0.44, abs=0.05)
    assert fit["lumbar"].b == pytest.approx(0.04, abs=0.05)
    assert fit["thoracic"].residual_sd_mm < 1.0 < fit["thoracic"].constant_sd_mm


def test_interior_pieces_are_measured_as_the_cut_programme_measures_them() -> None:
    vote = np.linspace(1.0, 0.0, 40)
    section = np.arange(40, dtype=np.float64) * 10.0
    pieces = interior_pieces([5, 15, 35], vote, section, bin_mm=1.25)  # the end pieces (before 5, after 35) left out
    assert [p.length_mm for p in pieces] == [12.5, 25.0]
    assert pieces[0].section_mm2 == pytest.approx(np.median(section[6:15]))
    assert pieces[1].thoracic_vote == pytest.approx(np.mean(vote[16:35]))
    with pytest.raises(ValueError, match="length_mm"):
        Piece(0.0, 100.0, 0.5)


def test_recording_cuts_with_the_fixed_prior_and_restores_the_modules() -> None:
    split, choose, rules = instances._split_component, instances._choose_cuts, inference.FINE_RULES
    with recording_fine_pieces() as pieces:
        assert inference.FINE_RULES.length_from_section is False
        assert instances._split_component is not split and pieces == []
    assert (instances._split_component, instances._choose_cuts, inference.FINE_RULES) == (split, choose, rules)
