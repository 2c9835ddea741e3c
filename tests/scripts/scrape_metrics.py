"""Scrapes corrald's /metrics as Prometheus would and parses it with the Prometheus client's own
OpenMetrics parser (which refuses malformed expositions: a missing `# EOF`, a counter sample
without `_total`, bad escaping). Prints JSON: the content type, every sample
as [name, labels, value], and whether another path answers 404. Usage: scrape_metrics.py URL"""
import json
import sys
import urllib.error
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

base = sys.argv[1]
with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
    out = {"content_type": r.headers["content-type"], "samples": []}
    text = r.read().decode()
for family in text_string_to_metric_families(text):
    for s in family.samples:
        out["samples"].append([s.name, s.labels, s.value])
try:
    urllib.request.urlopen(base + "/elsewhere", timeout=5)
    out["other_path_404"] = False
except urllib.error.HTTPError as e:
    out["other_path_404"] = e.code == 404
print(json.dumps(out))
