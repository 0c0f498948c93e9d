"""The counters every process keeps for Prometheus (`GET /metrics`, see server.metrics).

Counted where things happen, in whichever process they happen; with several workers, prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `avatargen serve` before the workers start) keeps them
in files that the scraped worker sums. What the status knows (bucket levels, the generator's state, the
spend) is read at scrape time instead, so nothing on the visitor path keeps a gauge up to date.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from avatargen.config import BUCKET_NAMES

AVATARS_SERVED = Counter("avatargen_avatars_served", "Avatars sent to visitors, by kind", ["kind"])
VISITOR_ERRORS = Counter("avatargen_visitor_errors",
                         "Visitors given another avatar (a fallback, the placeholder) because something failed")
IMAGES_GENERATED = Counter("avatargen_images_generated", "Images a run made, by bucket and outcome",
                           ["bucket", "outcome"])
GPU_BILLED_SECONDS = Counter("avatargen_gpu_billed_seconds", "GPU time billed by the provider, in seconds")
NOTIFICATIONS_FAILED = Counter("avatargen_notifications_failed", "Messages to the owner that could not be delivered")
# Visitor requests take about a millisecond; the admin API's event stream is left out (it lasts for hours).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REQUEST_DURATION = Histogram("avatargen_request_duration_seconds", "Time to answer a request, by route", ["route"],
                             buckets=DURATION_BUCKETS)

SERVED_KINDS = ("unique", "fallback", "placeholder")
GENERATED_OUTCOMES = ("stored", "held", "failed")
ROUTES = ("avatar", "admin", "demo", "healthz", "other")  # the `route` label (server.metrics.route_of)

# Every series exists from the start, at 0: a rate() or an alert on one that never moved still works.
for _kind in SERVED_KINDS:
    AVATARS_SERVED.labels(_kind)
for _bucket in BUCKET_NAMES:
    for _outcome in GENERATED_OUTCOMES:
        IMAGES_GENERATED.labels(_bucket, _outcome)
for _route in ROUTES:
    REQUEST_DURATION.labels(_route)
