#!/usr/bin/env python3
"""Turns the measurements of scripts/bench/http.sh into markdown tables, one per file size.

  http_report.py RESULTS FILES PATH...

RESULTS holds lines "PATH/FILE METRIC VALUE" (and the "machine" lines of report.py); FILES is
the files' names, space-separated, each a size such as 1k or 64k; PATHs give the rows' order.
Metrics: rps (requests per second), p50 and p99 (latency, µs), requests, errors, and cpu (CPU
seconds of the path's tunnel processes during the run; none for a path without any). A run
that failed has no lines and shows as n/a.
"""
import sys

from report import cell, load, machine, other_work, table

NAMES = {
    "direct": "direct to nginx (the limit)",
    "sesame-http": "sesame, virtual host (http)",
    "sesame-https": "sesame, virtual host (https)",
    "sesame-tcp": "sesame, public TCP port",
    "rathole-tcp": "rathole, tcp",
}
PEER = "rathole-tcp"


def cpu_per_request(figures):
    cpu, requests = figures.get("cpu"), figures.get("requests")
    return cpu / requests * 1e6 if cpu is not None and requests else None


def ratio(ours, theirs):
    return ours / theirs if ours is not None and theirs else None


def file_table(results, file, paths):
    def of(path):
        return results[f"{path}/{file}"]

    direct, peer = of("direct"), of(PEER)
    rows = []
    for path in paths:
        f = of(path)
        rows.append([
            NAMES[path],
            cell(f.get("rps"), "{:,.0f}"),
            cell(ratio(f.get("rps"), direct.get("rps")), "{:.2f}"),
            cell(ratio(f.get("rps"), peer.get("rps")), "{:.2f}"),
            cell(f.get("p50"), "{:,.0f}"),
            cell(f.get("p99"), "{:,.0f}"),
            cell(ratio(f.get("p50"), peer.get("p50")), "{:.2f}"),
            cell(cpu_per_request(f), "{:.0f}"),
            cell(ratio(cpu_per_request(f), cpu_per_request(peer)), "{:.2f}"),
            cell(f.get("errors"), "{:.0f}"),
        ])
    headings = ["path", "requests/s", "÷ direct", f"÷ {NAMES[PEER]}", "latency p50 µs", "latency p99 µs",
                f"p50 ÷ {NAMES[PEER]}", "tunnel CPU µs/request", f"CPU ÷ {NAMES[PEER]}", "errors"]
    return table(headings, rows)


def main():
    results, files, paths = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
    figures = load(results)
    print(machine(), other_work(figures), sep="\n")
    for file in files:
        print("", f"GET of a {file[:-1]} KiB file:", "", file_table(figures, file, paths), sep="\n")


if __name__ == "__main__":
    main()
