"""``bmd_node_associations_total{outcome, reason}``: the DICOM port's associations, summed over every receiver
process (issue 20 pt 2).

The counts live in memory that the node's process shares with its receiver processes
(service/receive/shared_limits.py); the node's SCP start publishes it, and this collector reads it at scrape time.
Every (outcome, reason) is exposed from 0, so that ``rate()`` and ``increase()`` see the first one:

* ``accepted``: ``peer`` (a configured peer) or ``echo_only`` (C-ECHO with any AE title from a peer's address);
* ``rejected``: the reason the connection or association was refused (address_not_allowed, too_many_per_address,
  too_many_overall, tls_handshake_failed, client_certificate_refused, pdu_too_large, request_timeout,
  wrong_called_ae, unknown_calling_ae, too_many_per_peer, other);
* ``aborted``: an accepted association the node ended for a limit (pdu_too_large, idle_timeout); it was counted as
  accepted too.

The counters start at 0 when the node starts (a Prometheus counter reset). No label carries an AE title or address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from service.receive.shared_limits import association_counts

METRIC_NAME = "bmd_node_associations"
"""Exposed as ``bmd_node_associations_total`` (prometheus_client adds the counter suffix)."""


class AssociationCollector(Collector):
    """Yields the association counters of ``counts`` (by default the ones the node's SCP published)."""

    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]] = association_counts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(METRIC_NAME, "DICOM associations on the node's port, by outcome and reason",
                                     labels=["outcome", "reason"])
        for (outcome, reason), value in sorted(self.counts().items()):
            family.add_metric([outcome, reason], float(value))
        yield family
