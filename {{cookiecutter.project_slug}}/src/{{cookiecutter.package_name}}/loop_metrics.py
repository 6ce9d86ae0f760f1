"""Counters and histograms kept as plain numbers, for the metrics updated per job and request.

prometheus_client's own take a lock and make several calls for each update (measured: 0.5 us
an increment, 1.0 us an observation); at three updates a job and two a request, that was
most of what metrics cost. These are updated and read on the event loop only (events are
emitted there, and /metrics renders there), so they need no lock: an update is an addition
or two, and the registry reads them when Prometheus scrapes.

Processes that share their metrics (PROMETHEUS_MULTIPROC_DIR) must keep values in
prometheus_client's shared files, so ServiceMetrics uses prometheus_client's classes there.
"""

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import INF, floatToGoString


class CounterSeries:
    """One label set of a LoopCounter."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramSeries:
    """One label set of a LoopHistogram: a count per bucket, and the sum."""

    __slots__ = ("counts", "created", "sum", "upper_bounds")

    def __init__(self, upper_bounds: tuple[float, ...]) -> None:
        self.upper_bounds = upper_bounds
        self.counts = [0] * len(upper_bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # The first bucket whose bound is >= amount; the last bound is +Inf.
        self.counts[bisect_left(self.upper_bounds, amount)] += 1
        self.sum += amount


class LoopCounter:
    """A labelled counter, exposed as `<name>_total` with `_created`, like prometheus_client's."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        registry: CollectorRegistry,
    ) -> None:
        self._name = name.removesuffix("_total")
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], CounterSeries] = {}
        registry.register(self)

    def labels(self, *values: str) -> CounterSeries:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = CounterSeries()
        return series

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, series in self._series.items():
            family.add_metric(values, series.value, created=series.created)
        yield family


class LoopHistogram:
    """A labelled histogram: cumulative `_bucket`s, `_count`, `_sum` and `_created`."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._upper_bounds = (*sorted(buckets), INF)
        # `le` written as prometheus_client writes it ("1.0", "+Inf"), so queries match either.
        self._le = tuple(map(floatToGoString, self._upper_bounds))
        self._series: dict[tuple[str, ...], HistogramSeries] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramSeries:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = HistogramSeries(self._upper_bounds)
        return series

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, series in self._series.items():
            cumulative = 0
            buckets = []
            for le, count in zip(self._le, series.counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(values, buckets, series.sum)
            # The family has no parameter for it; prometheus_client's Histogram writes it.
            labels = dict(zip(self._labelnames, values, strict=True))
            family.samples.append(Sample(f"{self._name}_created", labels, series.created))
        yield family
