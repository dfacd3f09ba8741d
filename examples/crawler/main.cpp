// crawler: a breadth-first, same-host web crawler on a coshard pool - the
// "aiohttp + BeautifulSoup in a process pool" workload in C++.
//
// The parent owns the frontier and the set of URLs already seen; each BFS
// round is one pool.map_settled over the round's new URLs. In the workers,
// every URL is a coroutine: an HTTP/1.1 GET over a per-worker keep-alive
// connection pool, its body parsed by libxml2 as it arrives (the CPU part
// that a single event loop would serialise). With no --url the program serves a directory
// itself (the Python manual by default) and crawls that.
//
//   crawler                                  # crawl the embedded python3-doc site
//   crawler --root site/ --csv pages.csv     # another directory, CSV per page
//   crawler --url http://127.0.0.1:8080/     # any http:// server
//   crawler --rounds 5                       # crawl, then re-fetch its pages 5 times (throughput)
#include <coshard/coshard.hpp>
#if COSHARD_EXAMPLE_MPI
#include <coshard/mpi.hpp>
#endif

#include <CLI/CLI.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "page.hpp"
#include "static_server.hpp"
#include "url.hpp"

namespace {

using crawler::page_result;
using clock_type = std::chrono::steady_clock;

struct totals {
  std::size_t pages = 0;
  std::uint64_t links = 0, bytes = 0, words = 0;
  std::map<std::string, std::size_t> errors;  // kind -> pages
  double seconds = 0;

  void add(const page_result& p) {
    ++pages;
    links += p.link_count;
    bytes += p.bytes;
    words += p.words;
    if (!p.error_kind.empty()) ++errors[p.error_kind];
  }

  [[nodiscard]] std::size_t error_count() const {
    std::size_t n = 0;
    for (const auto& [kind, count] : errors) n += count;
    return n;
  }
};

// A failure of the pool rather than of the page (the item_timeout backstop, a
// crashed worker) still becomes one page's error, never the crawl's.
page_result failed_item(const std::string& url, const std::exception_ptr& error) {
  page_result p;
  p.url = url;
  try {
    std::rethrow_exception(error);
  } catch (const coshard::timeout_error& e) {
    p.error_kind = "timeout";
    p.error = e.what();
  } catch (const coshard::worker_crashed& e) {
    p.error_kind = "worker_crashed";
    p.error = e.what();
  } catch (const std::exception& e) {
    p.error_kind = "task_error";
    p.error = e.what();
  }
  return p;
}

// One pool job over `urls`: a page_result per URL, in input order.
std::vector<page_result> fetch_all(coshard::basic_pool& pool, const std::vector<std::string>& urls,
                                   crawler::fetch_options opt, std::string label) {
  // Progress on stderr as pages come back: one redrawn line per round on a
  // terminal, one plain line per round (and every 5 s) in a log.
  coshard::job_options options;
  options.progress = coshard::progress_bar(
      {.label = std::move(label), .show_after = std::chrono::milliseconds(0), .unit = "pages"});
  // The lambda captures only `opt`, a trivially copyable struct: coshard sends
  // it to the workers as bytes. It is not itself a coroutine (so no capture
  // has to outlive a call); fetch_page takes its arguments by value.
  auto outcomes = pool.map_settled(
      urls, [opt](std::string url) { return crawler::fetch_page(std::move(url), opt); }, options);
  std::vector<page_result> pages;
  pages.reserve(urls.size());
  for (std::size_t i = 0; i < urls.size(); ++i)
    pages.push_back(outcomes[i] ? std::move(outcomes[i]).value() : failed_item(urls[i], outcomes[i].error()));
  return pages;
}

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// Breadth-first crawl from `start`, same host only, at most `max_pages`
// URLs (0: no limit). Returns the pages in BFS order.
std::vector<page_result> crawl(coshard::basic_pool& pool, const crawler::url& start, std::size_t max_pages,
                               crawler::fetch_options opt, totals& sum) {
  const auto t0 = clock_type::now();
  std::unordered_set<std::string> seen{start.str()};
  std::vector<std::string> frontier{start.str()};
  std::vector<page_result> pages;
  for (int round = 1; !frontier.empty(); ++round) {
    std::vector<page_result> fetched = fetch_all(pool, frontier, opt, "round " + std::to_string(round));
    std::vector<std::string> next;
    for (page_result& p : fetched) {
      for (const std::string& link : p.links) {
        if (max_pages != 0 && seen.size() >= max_pages) break;
        // Workers keep only links on the fetched page's own origin (a
        // redirect's Location too), and every page comes from the start's.
        if (seen.insert(link).second) next.push_back(link);
      }
      sum.add(p);
      pages.push_back(std::move(p));
    }
    frontier = std::move(next);
  }
  sum.seconds = seconds_since(t0);
  return pages;
}

void print_totals(const char* label, const totals& t) {
  std::printf("%s: %zu pages in %.2f s, %.1f pages/s\n", label, t.pages, t.seconds,
              t.seconds > 0 ? static_cast<double>(t.pages) / t.seconds : 0.0);
  std::printf("  links: %llu, words: %llu, bytes: %llu (%.1f MB/s)\n",
              static_cast<unsigned long long>(t.links), static_cast<unsigned long long>(t.words),
              static_cast<unsigned long long>(t.bytes),
              t.seconds > 0 ? static_cast<double>(t.bytes) / 1e6 / t.seconds : 0.0);
  std::string kinds;
  for (const auto& [kind, n] : t.errors) kinds += (kinds.empty() ? " (" : ", ") + kind + ": " + std::to_string(n);
  std::printf("  errors: %zu%s\n", t.error_count(), kinds.empty() ? "" : (kinds + ")").c_str());
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

bool write_csv(const std::string& path, const std::vector<page_result>& pages) {
  std::ofstream out(path);
  out << "url,status,title,links,words\n";
  for (const auto& p : pages)
    out << csv_field(p.url) << ',' << p.status << ',' << csv_field(p.title) << ',' << p.link_count << ','
        << p.words << '\n';
  return static_cast<bool>(out.flush());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Breadth-first same-host crawler on a coshard process pool"};
  std::string start_url, root, csv;
  std::filesystem::path default_root = "/usr/share/doc/python3/html";
  std::size_t max_pages = 0, rounds = 0, workers = 0, concurrency = 64;
  std::int64_t timeout_ms = 10'000;
  auto* url_opt = app.add_option("--url", start_url, "start URL, http://host[:port]/path (default: serve --root)");
  app.add_option("--root", root, "directory to serve and crawl when no --url is given (default: " +
                                     default_root.string() + ")")
      ->excludes(url_opt);
  app.add_option("--max-pages", max_pages, "stop after this many URLs (0: no limit)");
  app.add_option("--rounds", rounds, "after the crawl, re-fetch its pages this many times (throughput)");
  app.add_option("--workers", workers, "worker processes (0: one per core)");
  app.add_option("--concurrency", concurrency, "requests in flight per worker")->check(CLI::PositiveNumber);
  app.add_option("--timeout-ms", timeout_ms, "per-request timeout")->check(CLI::PositiveNumber);
  app.add_option("--csv", csv, "write url,status,title,links,words per page to this file");
  bool use_mpi = false;
  app.add_flag("--mpi", use_mpi,
               "run across the ranks of an MPI job (start with mpirun): every rank forks --workers workers "
               "(default 1), rank 0 crawls (with no --url it serves on 127.0.0.1: all ranks on one machine)");
  CLI11_PARSE(app, argc, argv);
#if COSHARD_EXAMPLE_MPI
  // Every rank builds the cluster first; all but the root then serve it.
  std::unique_ptr<coshard::mpi::cluster> cluster;
  if (use_mpi) {
    coshard::mpi::cluster_options options{.workers_per_rank = workers ? workers : 1, .concurrency = concurrency};
    options.pool.item_timeout = std::chrono::milliseconds(timeout_ms + 5'000);
    cluster = std::make_unique<coshard::mpi::cluster>(argc, argv, options);
    if (!cluster->is_root()) return cluster->serve();
  }
#else
  if (use_mpi) {
    std::fprintf(stderr, "crawler: --mpi: this build has no MPI (install libopenmpi-dev and rebuild)\n");
    return 2;
  }
#endif

  std::optional<crawler::url> start;
  if (!start_url.empty()) {
    start = crawler::parse_url(start_url);
    if (!start) {
      std::fprintf(stderr, "crawler: --url must be http://host[:port][/path] (no TLS): %s\n", start_url.c_str());
      return 2;
    }
  } else {
    if (root.empty()) root = default_root.string();
    std::error_code ec;
    if (!std::filesystem::is_directory(root, ec)) {
      std::fprintf(stderr, "crawler: no directory %s to serve; pass --root DIR or --url URL%s\n", root.c_str(),
                   root == default_root ? " (or install python3-doc)" : "");
      return 2;
    }
  }

  // The pool first: its workers are forked now, before the server's thread
  // exists. The item_timeout is only a backstop: each request has its own
  // deadline and reports a timeout as a page error.
  std::unique_ptr<coshard::process_pool> local;
  coshard::basic_pool* pool = nullptr;
  std::size_t pool_workers = 0;
#if COSHARD_EXAMPLE_MPI
  if (cluster) {
    pool = cluster.get();
    pool_workers = cluster->size();
  }
#endif
  if (!pool) {
    local = std::make_unique<coshard::process_pool>(coshard::pool_options{
        .workers = workers, .concurrency = concurrency, .item_timeout = std::chrono::milliseconds(timeout_ms + 5'000)});
    pool = local.get();
    pool_workers = local->size();
  }
  std::unique_ptr<crawler::static_server> server;
  if (!start) {
    server = std::make_unique<crawler::static_server>(root);
    start = crawler::parse_url("http://127.0.0.1:" + std::to_string(server->port()) + "/index.html");
    std::printf("serving %s on http://127.0.0.1:%u/\n", root.c_str(), server->port());
  }

  const crawler::fetch_options opt{.timeout_ms = timeout_ms,
                                   .max_idle = static_cast<std::uint32_t>(concurrency),
                                   .return_links = true};
  std::printf("crawling %s with %zu workers x %zu concurrent\n", start->str().c_str(), pool_workers, concurrency);
  totals crawled;
  std::vector<page_result> pages = crawl(*pool, *start, max_pages, opt, crawled);
  print_totals("crawl", crawled);

  if (!csv.empty()) {
    if (!write_csv(csv, pages)) {
      std::fprintf(stderr, "crawler: cannot write %s\n", csv.c_str());
      return 1;
    }
    std::printf("  wrote %s\n", csv.c_str());
  }

  if (rounds > 0) {
    std::vector<std::string> urls;
    for (const auto& p : pages) urls.push_back(p.url);
    crawler::fetch_options bench = opt;
    bench.return_links = false;  // counts only: the URL list is fixed
    totals all;
    for (std::size_t r = 1; r <= rounds; ++r) {
      totals one;
      const auto t0 = clock_type::now();
      for (const auto& p : fetch_all(*pool, urls, bench, "re-fetch " + std::to_string(r))) one.add(p);
      one.seconds = seconds_since(t0);
      const std::string label = "round " + std::to_string(r) + "/" + std::to_string(rounds);
      print_totals(label.c_str(), one);
      for (const auto& [kind, n] : one.errors) all.errors[kind] += n;
      all.pages += one.pages;
      all.links += one.links;
      all.bytes += one.bytes;
      all.words += one.words;
      all.seconds += one.seconds;
    }
    print_totals("all rounds", all);
  }
  return 0;
}
