"""Classification of C-STORE answers (PS3.4 B.2.3, PS3.7 C) into success / warning / permanent / transient."""

from __future__ import annotations

import pytest

from service.export.cstore_scu import classify_status
from service.export.transport import DeliveryOutcome, OutcomeKind


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (0x0000, OutcomeKind.SUCCESS),
        (0x0001, OutcomeKind.WARNING),
        (0xB000, OutcomeKind.WARNING),
        (0xB006, OutcomeKind.WARNING),
        (0xB007, OutcomeKind.WARNING),
        (0xA700, OutcomeKind.TRANSIENT),
        (0xA7FF, OutcomeKind.TRANSIENT),
        (0xA900, OutcomeKind.PERMANENT),
        (0xA9FF, OutcomeKind.PERMANENT),
        (0xC000, OutcomeKind.PERMANENT),
        (0xC210, OutcomeKind.PERMANENT),
        (0x0122, OutcomeKind.PERMANENT),
        (0x0124, OutcomeKind.PERMANENT),
        (0x0117, OutcomeKind.PERMANENT),
        (0x0110, OutcomeKind.TRANSIENT),  # processing failure: may well work next time
        (0xFE00, OutcomeKind.TRANSIENT),
        (0x1234, OutcomeKind.TRANSIENT),  # unknown: retry rather than lose the object
    ],
)
def test_classify_status(status: int, kind: OutcomeKind) -> None:
    assert classify_status(status) is kind


def test_delivered_only_for_success_and_warning() -> None:
    assert DeliveryOutcome(OutcomeKind.SUCCESS, 0, "").delivered
    assert DeliveryOutcome(OutcomeKind.WARNING, 0xB000, "").delivered
    assert not DeliveryOutcome(OutcomeKind.PERMANENT, 0xA900, "").delivered
    assert not DeliveryOutcome(OutcomeKind.TRANSIENT, None, "").delivered
