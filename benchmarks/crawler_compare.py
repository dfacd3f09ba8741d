#!/usr/bin/env python3
"""The crawler against the Python pattern, on the same site, in the same run.

Starts nginx on 127.0.0.1 (a config written to a temporary directory, not a daemon,
access_log off, one worker) serving --root (the python3 manual by default), then runs
the crawlers in turn, --pairs times (coshard, [baseline,] python, coshard, ...), each
crawling http://127.0.0.1:PORT/index.html breadth-first with --workers processes x
--concurrency requests in flight:

  coshard   --crawler (examples/crawler, built in Release)
  baseline  --baseline, optional: another build of examples/crawler (e.g. an older one)
  python    benchmarks/python/crawler.py on --python (Debian's /usr/bin/python3)

For every run it records the pages and the crawl's own time (the "crawl: N pages in S s"
line), the wall time of the whole command (process start-up and pool creation
included), and the CPU time, user + sys, of the command and all its processes
(getrusage(RUSAGE_CHILDREN) around it: coshard's workers and Python's pool processes are
reaped inside it, so they count); nginx's CPU for that run is reported on its own. Each
contender's medians follow, then the ratio python/contender of every pair (same pair,
adjacent runs) and its median. It fails (exit 1) if the runs did not all find the same
number of pages, or if a run failed.

Usage:
  /usr/bin/python3 benchmarks/crawler_compare.py --crawler build-release/examples/crawler/crawler
      [--baseline OTHER_CRAWLER] [--pairs 3] [--workers 2] [--concurrency 64]
      [--root /usr/share/doc/python3-doc/html] [--python /usr/bin/python3] [--json FILE]
Needs nginx and python3-aiohttp python3-bs4 python3-lxml (scripts/install-deps.sh takes
them as arguments); scripts/compare-crawler.sh builds the crawler and runs this.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_CRAWLER = os.path.join(HERE, "python", "crawler.py")
CRAWL_LINE = re.compile(r"^crawl: (\d+) pages in ([0-9.]+) s", re.M)
TOTALS_LINE = re.compile(r"links: (\d+), words: (\d+), bytes: (\d+)")
ERRORS_LINE = re.compile(r"errors: (\d+)")

NGINX_CONF = """\
worker_processes 1;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        index index.html;
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx in the foreground on 127.0.0.1:port, stopped (and its temp dir removed) on exit."""

    def __init__(self, root: str, nginx: str):
        self.tmp = tempfile.mkdtemp(prefix="coshard-nginx-")
        self.port = free_port()
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(NGINX_CONF.format(tmp=self.tmp, port=self.port, root=os.path.abspath(root)))
        self.proc = subprocess.Popen([nginx, "-c", conf, "-p", self.tmp, "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start listening within 10 s")
                time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """user + sys of the nginx master and its worker(s), from /proc."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(pid) == self.proc.pid or int(fields[1]) == self.proc.pid:  # fields[1]: ppid
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        return total

    def __enter__(self) -> "Nginx":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run(name: str, cmd: list[str], nginx: Nginx) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    nginx_before = nginx.cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    nginx_cpu = nginx.cpu_seconds() - nginx_before
    crawl = CRAWL_LINE.search(proc.stdout)
    totals = TOTALS_LINE.search(proc.stdout)
    errors = ERRORS_LINE.search(proc.stdout)
    if proc.returncode != 0 or not crawl or not totals or not errors:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError(f"{name}: {' '.join(cmd)} failed (exit {proc.returncode})")
    r = {
        "name": name,
        "pages": int(crawl.group(1)),
        "crawl_s": float(crawl.group(2)),
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "nginx_cpu_s": nginx_cpu,
        "links": int(totals.group(1)),
        "words": int(totals.group(2)),
        "bytes": int(totals.group(3)),
        "errors": int(errors.group(1)),
    }
    r["pages_per_s"] = r["pages"] / r["crawl_s"]
    print(f"  {name:<9} {r['pages']:>5} pages  crawl {r['crawl_s']:6.2f} s  wall {wall:6.2f} s  "
          f"cpu {r['cpu_s']:6.2f} s  nginx cpu {nginx_cpu:5.2f} s  {r['pages_per_s']:7.1f} pages/s  "
          f"links {r['links']}  words {r['words']}  errors {r['errors']}", flush=True)
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--crawler", required=True, help="examples/crawler binary")
    parser.add_argument("--baseline", help="another crawler binary to run in the same pairs")
    parser.add_argument("--pairs", type=int, default=3, help="runs of each contender, interleaved")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--root", default="/usr/share/doc/python3-doc/html", help="site nginx serves")
    parser.add_argument("--python", default="/usr/bin/python3", help="interpreter for crawler.py")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument("--json", help="write every run and the medians to this file")
    args = parser.parse_args()

    if not os.path.isfile(os.path.join(args.root, "index.html")):
        print(f"crawler_compare: no {args.root}/index.html (install python3-doc)", file=sys.stderr)
        return 2
    common = ["--workers", str(args.workers), "--concurrency", str(args.concurrency)]
    contenders = [("coshard", [args.crawler])]
    if args.baseline:
        contenders.append(("baseline", [args.baseline]))
    contenders.append(("python", [args.python, PYTHON_CRAWLER]))

    with Nginx(args.root, args.nginx) as nginx:
        url = f"http://127.0.0.1:{nginx.port}/index.html"
        print(f"# crawler comparison: {url} (nginx serving {args.root}), {args.workers} workers x "
              f"{args.concurrency} concurrent, {args.pairs} interleaved rounds, {os.cpu_count()} cpus, "
              f"{platform.platform()}", flush=True)
        runs: dict[str, list[dict]] = {name: [] for name, _ in contenders}
        for i in range(args.pairs):
            print(f"round {i + 1}/{args.pairs}", flush=True)
            for name, cmd in contenders:
                runs[name].append(run(name, cmd + ["--url", url] + common, nginx))

    medians = {}
    print("medians:")
    for name, rs in runs.items():
        m = {k: statistics.median(r[k] for r in rs)
             for k in ("pages", "crawl_s", "wall_s", "cpu_s", "nginx_cpu_s", "pages_per_s")}
        medians[name] = m
        print(f"  {name:<9} {m['pages']:>5.0f} pages  crawl {m['crawl_s']:6.2f} s  wall {m['wall_s']:6.2f} s  "
              f"cpu {m['cpu_s']:6.2f} s  {m['pages_per_s']:7.1f} pages/s")
    ratios = {}
    for name, _ in contenders:
        if name == "python":
            continue
        per_pair = {k: [p[k] / c[k] for c, p in zip(runs[name], runs["python"])]
                    for k in ("crawl_s", "wall_s", "cpu_s")}
        ratios[name] = {k: statistics.median(v) for k, v in per_pair.items()}
        print(f"  python / {name}: crawl time {ratios[name]['crawl_s']:.1f}x, wall {ratios[name]['wall_s']:.1f}x, "
              f"cpu {ratios[name]['cpu_s']:.1f}x  (medians of the per-round ratios; time per round: "
              + ", ".join(f"{x:.1f}" for x in per_pair["crawl_s"]) + ")")
    if args.baseline:
        per_pair = [b["crawl_s"] / c["crawl_s"] for c, b in zip(runs["coshard"], runs["baseline"])]
        print(f"  baseline / coshard: crawl time {statistics.median(per_pair):.2f}x")

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"runs": runs, "medians": medians, "ratios": ratios, "url_root": args.root,
                       "workers": args.workers, "concurrency": args.concurrency}, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")

    page_counts = {r["pages"] for rs in runs.values() for r in rs}
    if len(page_counts) != 1:
        print(f"FAIL: the runs found different page counts: {sorted(page_counts)}", file=sys.stderr)
        return 1
    print(f"ok: every run found {page_counts.pop()} pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
