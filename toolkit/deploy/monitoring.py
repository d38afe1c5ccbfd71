"""Prometheus: a ServiceMonitor for Triton's metrics port, and the Prometheus Adapter rule for the HPA."""

from __future__ import annotations

from typing import Any

from . import pod
from .options import Plan
from .serving import QUEUE_METRIC

SCRAPE_INTERVAL = "15s"
RATE_WINDOW = "1m"  # at least four scrapes, so one missed scrape does not empty the rate


def service_monitor(plan: Plan) -> dict[str, Any]:
    """Scrape /metrics on the Service's `metrics` port; targets get namespace and pod labels."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": pod.metadata(plan, f"{plan.app}-triton", "serving"),
            "spec": {"selector": {"matchLabels": pod.selector(plan, "serving")},
                     "endpoints": [{"port": "metrics", "path": "/metrics",
                                    "interval": SCRAPE_INTERVAL, "scheme": "http"}]}}


def adapter_rule() -> dict[str, Any]:
    """Average queue time per request, per pod and model, from Triton's two cumulative counters.

    nv_inference_queue_duration_us grows by every request's queueing time and
    nv_inference_request_success by one per request: the ratio of their rates is the mean
    queue time of the requests in the window. clamp_min keeps an idle pod at 0 instead of
    0/0, so the HPA can still scale down when traffic stops.
    """
    window = RATE_WINDOW
    query = (f"sum(rate(nv_inference_queue_duration_us{{<<.LabelMatchers>>}}[{window}])) "
             "by (<<.GroupBy>>) / clamp_min(sum(rate(nv_inference_request_success"
             f"{{<<.LabelMatchers>>}}[{window}])) by (<<.GroupBy>>), 0.001)")
    return {"seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"},
                                        "pod": {"resource": "pod"}}},
            "name": {"matches": "^nv_inference_queue_duration_us$", "as": QUEUE_METRIC},
            "metricsQuery": query}


def adapter_config(plan: Plan) -> dict[str, Any]:
    """A ConfigMap holding a complete adapter config (`--config=/etc/adapter/config.yaml`)."""
    import yaml

    text = yaml.safe_dump({"rules": [adapter_rule()]}, sort_keys=False, width=1000)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": pod.metadata(plan, f"{plan.app}-adapter-rules", "serving"),
            "data": {"config.yaml": text}}


def adapter_helm_values() -> dict[str, Any]:
    """The same rule for the prometheus-community/prometheus-adapter Helm chart."""
    return {"rules": {"custom": [adapter_rule()]}}
