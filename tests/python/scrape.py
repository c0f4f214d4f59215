#!/usr/bin/env python3
"""Scrapes a Prometheus endpoint as Prometheus would, and parses it with the official client.

    scrape.py URL
        GETs URL, checks that the answer is the OpenMetrics text format, parses it with
        prometheus_client's OpenMetrics parser (which refuses anything malformed), and prints
        one JSON line: {"ok": true, "samples": [[NAME, {LABEL: VALUE}, NUMBER], ...]}. Exits 1,
        with the reason on stderr, on any error.

Runs with prometheus_client 0.16 (Debian 12) and newer releases.
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=30) as answer:
        content_type = answer.headers.get("Content-Type", "")
        text = answer.read().decode("utf-8")
    if not content_type.startswith("application/openmetrics-text"):
        raise SystemExit(f"content type {content_type!r} is not OpenMetrics")
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.append([sample.name, sample.labels, sample.value])
    print(json.dumps({"ok": True, "samples": samples}))


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # the reason, for the test's failure message
        print(f"scrape failed: {error!r}", file=sys.stderr)
        sys.exit(1)
