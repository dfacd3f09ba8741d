#!/usr/bin/env python3
"""The articles' crawler pattern in Python (reference for examples/crawler): a
ProcessPoolExecutor of --workers processes, each running one asyncio event loop with
aiohttp (--concurrency requests in flight) and BeautifulSoup with the lxml parser.

The crawl is the C++ crawler's, rule for rule, so that both fetch the same pages:

  * breadth-first: the parent owns the frontier and the set of URLs already seen; each
    round's new URLs are cut into batches of --concurrency, handed to the pool with
    executor.map (so a process that finishes early takes the next batch, as coshard's
    workers take the next items), and a batch is one asyncio.gather in that process's
    event loop (kept for the whole crawl, with its aiohttp session, so keep-alive
    connections last across rounds as in coshard's workers);
  * a page's links are its <a href> values resolved against <base href> (itself resolved
    against the page) or the page, fragment dropped, kept only if http:// on the start
    URL's host and port, de-duplicated per page; redirects are not followed, their
    Location is a link;
  * only 2xx responses whose Content-Type is HTML (or missing) are parsed; any status
    >= 400 is an error "http_<status>";
  * URLs are put in the same normal form (lower-case host, no :80, dot segments removed,
    bytes outside printable ASCII percent-encoded) before de-duplication.

Per page it reports what the C++ crawler does: the title (whitespace collapsed), the
number of same-host links and the word count of the text outside <script>, <style>,
<noscript>, <template> and <title>, the BeautifulSoup way (decompose those, then
get_text().split()); where a page glues block elements without whitespace between them
this counts fewer words than the C++ crawler, which splits at every non-inline tag.

Prints the C++ crawler's summary lines ("crawl: N pages in S s, R pages/s", links,
words, bytes, errors), which benchmarks/crawler_compare.py reads.

Usage:
  /usr/bin/python3 benchmarks/python/crawler.py --url http://127.0.0.1:8080/index.html
                   [--workers 2] [--concurrency 64] [--max-pages N] [--csv FILE]
Needs Debian's python3-aiohttp, python3-bs4 and python3-lxml
(./scripts/install-deps.sh python3-aiohttp python3-bs4 python3-lxml).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from urllib.parse import urldefrag, urljoin, urlsplit

import aiohttp
from bs4 import BeautifulSoup

HIDDEN_TAGS = ["script", "style", "noscript", "template", "title"]


def encode_target(s: str) -> str:
    """Percent-encodes the bytes the C++ crawler encodes: controls, space and non-ASCII."""
    out = []
    for b in s.encode("utf-8"):
        out.append(f"%{b:02X}" if b <= 0x20 or b >= 0x7F else chr(b))
    return "".join(out)


def normalize(address: str) -> str | None:
    """The C++ crawler's normal form of an absolute http:// URL; None for anything else."""
    parts = urlsplit(address.strip(" \t\n\r\f"))
    if parts.scheme.lower() != "http" or not parts.hostname or "@" in parts.netloc:
        return None
    try:
        port = parts.port or 80
    except ValueError:
        return None
    host = parts.hostname.lower()
    authority = host if port == 80 else f"{host}:{port}"
    target = encode_target(parts.path or "/") + (encode_target("?" + parts.query) if parts.query else "")
    if not target.startswith("/"):
        target = "/" + target
    return f"http://{authority}{target}"


def origin(address: str) -> tuple[str, int]:
    parts = urlsplit(address)
    return (parts.hostname or "").lower(), parts.port or 80


def resolve(base: str, href: str) -> str | None:
    """href resolved against base, without its fragment, normalized; None if not http://."""
    href = href.strip(" \t\n\r\f")
    joined, _fragment = urldefrag(urljoin(base, href))
    return normalize(joined)


def is_html(content_type: str) -> bool:
    # No Content-Type: treated as HTML, as the C++ crawler does.
    content_type = content_type.lower()
    return not content_type or content_type.startswith(("text/html", "application/xhtml"))


def summarize(address: str, body: bytes, charset: str | None) -> tuple[str, list[str], int]:
    """CPU part (runs in the worker's event loop): title, same-origin links, words."""
    soup = BeautifulSoup(body, "lxml", from_encoding=charset)
    title = " ".join(soup.title.get_text().split()) if soup.title else ""
    base = address
    base_tag = soup.find("base", href=True)
    if base_tag is not None:
        base = resolve(address, base_tag["href"]) or address
    home = origin(address)
    links: list[str] = []
    seen: set[str] = set()
    for a in soup.find_all("a", href=True):
        target = resolve(base, a["href"])
        if target is not None and origin(target) == home and target not in seen:
            seen.add(target)
            links.append(target)
    for tag in soup(HIDDEN_TAGS):
        tag.decompose()
    words = len(soup.get_text().split())
    return title, links, words


async def fetch_page(session: aiohttp.ClientSession, limit: asyncio.Semaphore, address: str,
                     timeout: float) -> dict:
    page = {"url": address, "status": 0, "error_kind": "", "title": "", "links": [], "words": 0, "bytes": 0}
    async with limit:
        try:
            async with session.get(address, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                body = await r.read()
                page["status"] = r.status
                page["bytes"] = len(body)
                if r.status >= 400:
                    page["error_kind"] = f"http_{r.status}"
                if 300 <= r.status < 400 and "Location" in r.headers:
                    target = resolve(address, r.headers["Location"])
                    if target is not None and origin(target) == origin(address):
                        page["links"] = [target]
                elif r.status < 300 and is_html(r.headers.get("Content-Type", "")):
                    page["title"], page["links"], page["words"] = summarize(address, body, r.charset)
        except asyncio.TimeoutError:
            page["error_kind"] = "timeout"
        except aiohttp.ClientError as e:
            page["error_kind"] = "connect" if isinstance(e, aiohttp.ClientConnectionError) else "io"
    return page


# Per worker process: one event loop and one aiohttp session for the whole crawl.
_loop: asyncio.AbstractEventLoop | None = None
_session: aiohttp.ClientSession | None = None
_limit: asyncio.Semaphore | None = None


def _init_worker(concurrency: int) -> None:
    global _loop, _session, _limit
    _loop = asyncio.new_event_loop()
    asyncio.set_event_loop(_loop)

    async def make() -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
        return aiohttp.ClientSession(connector=connector, auto_decompress=False), asyncio.Semaphore(concurrency)

    _session, _limit = _loop.run_until_complete(make())


def _pid(_: int) -> int:
    return os.getpid()


def fetch_batch(urls: list[str], timeout: float) -> list[dict]:
    """Runs in a worker process: all of `urls` at once on its event loop."""
    assert _loop is not None and _session is not None and _limit is not None
    coros = [fetch_page(_session, _limit, u, timeout) for u in urls]
    return _loop.run_until_complete(asyncio.gather(*coros))


def crawl(pool: ProcessPoolExecutor, batch_size: int, start: str, max_pages: int, timeout: float,
          progress: bool) -> list[dict]:
    t0 = time.perf_counter()
    seen = {start}
    frontier = [start]
    pages: list[dict] = []
    round_no = 0
    while frontier:
        round_no += 1
        batches = [frontier[i:i + batch_size] for i in range(0, len(frontier), batch_size)]
        fetched = {p["url"]: p for batch in pool.map(fetch_batch, batches, [timeout] * len(batches))
                   for p in batch}
        next_frontier = []
        for address in frontier:  # BFS order, as the C++ crawler keeps it
            p = fetched[address]
            for link in p["links"]:
                if max_pages and len(seen) >= max_pages:
                    break
                if link not in seen:
                    seen.add(link)
                    next_frontier.append(link)
            pages.append(p)
        frontier = next_frontier
        if progress:
            print(f"\rround {round_no}: {len(pages)} pages, {len(frontier)} queued, "
                  f"{len(pages) / (time.perf_counter() - t0):.0f} pages/s   ", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return pages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--url", required=True, help="start URL, http://host[:port]/path")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight per worker")
    parser.add_argument("--max-pages", type=int, default=0, help="stop after this many URLs (0: no limit)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    parser.add_argument("--csv", help="write url,status,title,links,words per page to this file")
    args = parser.parse_args()

    start = normalize(args.url)
    if start is None:
        print(f"crawler.py: --url must be http://host[:port][/path]: {args.url}", file=sys.stderr)
        return 2
    print(f"crawling {start} with {args.workers} workers x {args.concurrency} concurrent (python "
          f"{sys.version.split()[0]}, aiohttp {aiohttp.__version__}, BeautifulSoup + lxml)", flush=True)
    with ProcessPoolExecutor(args.workers, initializer=_init_worker, initargs=(args.concurrency,)) as pool:
        # Start the workers untimed, as coshard's pool is built before its crawl starts.
        list(pool.map(_pid, range(args.workers)))
        t0 = time.perf_counter()
        pages = crawl(pool, args.concurrency, start, args.max_pages, args.timeout, sys.stderr.isatty())
        seconds = time.perf_counter() - t0

    errors = Counter(p["error_kind"] for p in pages if p["error_kind"])
    print(f"crawl: {len(pages)} pages in {seconds:.2f} s, {len(pages) / seconds:.1f} pages/s")
    total_bytes = sum(p["bytes"] for p in pages)
    print(f"  links: {sum(len(p['links']) for p in pages)}, words: {sum(p['words'] for p in pages)}, "
          f"bytes: {total_bytes} ({total_bytes / 1e6 / seconds:.1f} MB/s)")
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(errors.items()))
    print(f"  errors: {sum(errors.values())}{f' ({kinds})' if kinds else ''}")
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(["url", "status", "title", "links", "words"])
            for p in pages:
                out.writerow([p["url"], p["status"], p["title"], len(p["links"]), p["words"]])
        print(f"  wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
