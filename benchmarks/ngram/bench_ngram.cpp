// bench_ngram - the map-reduce word count of examples/ngram_count: total
// match_count per word of a Google Books Ngram 1-gram file, through coshard's
// process pool and in one process, with the example's own counting code
// (examples/ngram_count/ngram_counting.hpp).
//
//   ngram/sequential        the tuned single-process run: the whole file in
//                           one pass, read with pread in 1 MiB blocks
//                           (ngram::for_each_block), the example's parser
//                           into one word map; no chunks, no pool
//   ngram/sequential/mmap   the same pass over one mmap of the whole file
//                           (MAP_POPULATE, MADV_SEQUENTIAL), to show what
//                           reading through a mapping costs on this machine
//   ngram/workers:W/batch:1/concurrency:64
//                           pool.map_reduce over the file cut on line
//                           boundaries into chunks of COSHARD_NGRAM_CHUNK_MB:
//                           each worker reads and counts its chunks itself (no
//                           file data crosses a socket), one chunk per batch as
//                           in the example; the partial maps are merged in the
//                           worker, then in the parent, by ngram::add_counts.
//                           Registered through coshard::bench::register_map_reduce
//                           for W = 1 .. COSHARD_BENCH_WORKERS.
//
// Every benchmark reports wall-clock time per pass over the file and
// bytes_per_second (file bytes per pass); the speedup of W workers is
// ngram/sequential's time over theirs. Each pass builds and destroys its
// result, in the pool runs and in the sequential ones alike.
//
// Checks, untimed: after ngram/sequential's first timed loop, one pool of
// the largest worker count counts the file and its result must equal the
// sequential one (total, lines, distinct words, every word's count; a few
// counts are printed on a mismatch). The pool benchmarks also compare their
// last result with the chunks counted in this process (coshard::bench's
// verify). A mismatch fails the benchmark.
//
// Environment:
//   COSHARD_NGRAM_FILE      the 1-gram file (default /tmp/coshard-ngram-200mb.tsv);
//                           generated when missing, by the example's generator
//                           (the same file as `ngram_count --generate FILE
//                           --size-mb 200`; it takes a few seconds)
//   COSHARD_NGRAM_MB        size of a generated file in MB (default 200)
//   COSHARD_NGRAM_CHUNK_MB  chunk size of the pool runs in MB (default 8, the
//                           example's --chunk-mb)
//   COSHARD_BENCH_WORKERS   largest worker count (default: hardware threads)
//
// The input file should be in the page cache: the first benchmark's first
// pass reads it in if it is not. Run (about 5 s on 2 cores, 15 s with 3
// repetitions):
//   cmake --build build --target bench_ngram
//   build/benchmarks/bench_ngram --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <coshard/benchmark.hpp>

#include "ngram_counting.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

/// The input file and its chunks, prepared once at registration.
struct ngram_input {
  std::string path;
  std::uint64_t bytes = 0;
  std::vector<ngram::chunk> chunks;
};

ngram_input prepare_input() {
  ngram_input in;
  const char* env = std::getenv("COSHARD_NGRAM_FILE");
  in.path = env && *env ? env : "/tmp/coshard-ngram-200mb.tsv";
  if (!std::filesystem::exists(in.path)) {
    const std::size_t mb = coshard::bench::env_size("COSHARD_NGRAM_MB", 200);
    std::fprintf(stderr, "bench_ngram: %s is missing; generating it (%zu MB, as ngram_count --generate)...\n",
                 in.path.c_str(), mb);
    ngram::generate_file(in.path, std::uint64_t{mb} << 20, /*seed=*/1, "/usr/share/dict/american-english");
  }
  in.bytes = std::filesystem::file_size(in.path);
  const std::size_t chunk_mb = coshard::bench::env_size("COSHARD_NGRAM_CHUNK_MB", 8);
  in.chunks = ngram::plan_chunks({in.path}, std::uint64_t{chunk_mb} << 20, ngram::is_newline);
  return in;
}

std::vector<std::size_t> worker_counts() {
  const std::size_t hw = std::max(1u, std::thread::hardware_concurrency());
  const std::size_t top = coshard::bench::env_size("COSHARD_BENCH_WORKERS", hw);
  std::vector<std::size_t> w;
  for (std::size_t i = 1; i <= top; ++i) w.push_back(i);
  return w;
}

/// The map step the workers run: one chunk -> its word counts.
constexpr auto count_chunk = [](const ngram::chunk& c) { return ngram::count_file_chunk(c); };

/// Empty if `got` equals `want`, else what differs.
std::string difference(const ngram::word_counts& want, const ngram::word_counts& got) {
  if (got == want) return {};
  auto count_of = [](const ngram::word_counts& r, const std::string& w) -> unsigned long long {
    return r.words.count_of(w);
  };
  std::string most = "Aardvark";  // the sequential result's most frequent word
  std::uint64_t best = 0;
  want.words.for_each([&](std::string_view w, std::uint64_t n) {
    if (n > best) best = n, most = w;
  });
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "total %llu vs %llu, lines %llu vs %llu, distinct words %zu vs %zu, "
                "Aardvark %llu vs %llu, %s %llu vs %llu (sequential vs pool)",
                static_cast<unsigned long long>(want.total), static_cast<unsigned long long>(got.total),
                static_cast<unsigned long long>(want.lines), static_cast<unsigned long long>(got.lines),
                want.words.size(), got.words.size(), count_of(want, "Aardvark"), count_of(got, "Aardvark"),
                most.c_str(), count_of(want, most), count_of(got, most));
  return buf;
}

/// Counts the file once through a pool and compares with `want`; empty if equal.
std::string check_pool_against(const ngram_input& in, const ngram::word_counts& want) {
  try {
    const auto workers = worker_counts();
    coshard::process_pool pool{{.workers = workers.back(), .batch_size = 1}};
    const auto got = pool.map_reduce(in.chunks, count_chunk, ngram::add_counts{}, ngram::word_counts{});
    const std::string diff = difference(want, got);
    return diff.empty() ? diff : "the pool's result differs from the sequential one: " + diff;
  } catch (const std::exception& e) {
    return std::string("the check through the pool failed: ") + e.what();
  }
}

void register_sequential(const ngram_input& in, const std::string& name, bool use_mmap) {
  benchmark::RegisterBenchmark(name.c_str(), [&in, use_mmap](benchmark::State& state) {
    const ngram::chunk whole{in.path, 0, in.bytes};
    std::optional<ngram::word_counts> out;
    for (auto _ : state) {
      try {
        out.emplace(use_mmap ? ngram::count_mapped_chunk(whole) : ngram::count_file_chunk(whole));
      } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        break;
      }
      benchmark::DoNotOptimize(out->total);
    }
    if (state.error_occurred()) return;
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(in.bytes));
    state.counters["lines"] = static_cast<double>(out->lines);
    state.counters["distinct_words"] = static_cast<double>(out->words.size());
    static bool checked = false;  // once per process, not per repetition
    if (!use_mmap && !checked) {
      checked = true;
      if (const std::string why = check_pool_against(in, *out); !why.empty()) state.SkipWithError(why.c_str());
    }
  })
      ->UseRealTime()
      ->MinTime(0.5)
      ->Unit(benchmark::kMillisecond);
}

const bool registered = [] {
  static std::optional<ngram_input> in;
  ngram::keep_large_blocks_in_heap();  // as ngram_count does, before any pool forks
  try {
    in.emplace(prepare_input());
  } catch (const std::exception& e) {
    const std::string why = std::string("bench_ngram: no input: ") + e.what();
    benchmark::RegisterBenchmark("ngram/input", [why](benchmark::State& state) {
      state.SkipWithError(why.c_str());
      for (auto _ : state) {
      }
    });
    return false;
  }
  // Baselines first: they read the file into the page cache, and compare.py
  // and readers expect them above the pool runs.
  register_sequential(*in, "ngram/sequential", false);
  register_sequential(*in, "ngram/sequential/mmap", true);
  coshard::bench::register_map_reduce("ngram", in->chunks, count_chunk, ngram::add_counts{}, ngram::word_counts{},
                                      {.workers = worker_counts(),
                                       .batch_sizes = {1},
                                       .sequential = false,
                                       .bytes_per_pass = static_cast<std::size_t>(in->bytes)});
  return true;
}();

}  // namespace
