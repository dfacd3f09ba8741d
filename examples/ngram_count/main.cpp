// ngram_count - the map-reduce workload of the Python articles: total
// match_count per word over Google Books Ngram 1-gram files, on every core.
//
// The parent only plans the work: it cuts each plain file into chunks on line
// boundaries and sends (path, offset, length) items to the pool. Each worker
// reads its chunk itself (pread), so no file data crosses a socket; it returns a
// word -> count map; the maps are merged by the pool's map_reduce with a
// custom reducer (the result also carries a bad-line count), inside each
// worker for the items of one batch, then in the parent.
// `.gz` files cannot be split without decompressing them, so each is one item:
// per-file parallelism, as in the articles, which read one .gz file per letter.
//
//   ngram_count                          generate /tmp/coshard-ngram-200mb.tsv if missing, count it
//   ngram_count FILE_OR_DIR... [--verify] [--workers N] [--chunk-mb M] [--top K] [--word W]...
//   ngram_count FILE_OR_DIR... --sequential   count in this process, each file in one pass, no pool
//   ngram_count --text DIR_OR_FILE...    count words (lowercased letter runs) in ordinary text
//   ngram_count --generate FILE --size-mb N [--seed S]
//   mpirun -np 3 ngram_count --mpi FILE_OR_DIR... [--hold-partials auto|on|off]   across MPI ranks
//
// Output is one `key: value` per line so that scripts can read it
// (see smoke_test.sh next to this file). The counting core (work item, parser,
// chunk planning, generator) is in ngram_counting.hpp, which
// benchmarks/ngram/bench_ngram.cpp shares; .gz reading and --text stay here.
#include "ngram_counting.hpp"

#include <coshard/coshard.hpp>
#if COSHARD_EXAMPLE_MPI
#include <coshard/mpi.hpp>
#endif

#include <CLI/CLI.hpp>
#include <zlib.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fs = std::filesystem;

namespace {

// The counting core (work item, result, parser, chunk planning, generator)
// is in ngram_counting.hpp, shared with benchmarks/ngram.
using ngram::add_counts;
using ngram::chunk;
using ngram::count_file_chunk;
using ngram::for_each_block;
using ngram::generate_file;
using ngram::is_gz;
using ngram::is_newline;
using ngram::merge_into;
using ngram::ngram_counter;
using ngram::os_error;
using ngram::plan_chunks;
using ngram::word_counts;

bool is_letter(char c) { return static_cast<unsigned char>((c | 0x20) - 'a') < 26; }

/// --text: words are runs of ASCII letters, lowercased; everything else
/// separates. A word is looked up as a view into the text; only one with
/// capitals is copied first, to lowercase it.
void count_text_words(std::string_view text, word_counts& out) {
  std::string lowered;  // reused: no allocation per word once it has grown
  const char* p = text.data();
  const char* const end = p + text.size();
  for (;;) {
    while (p < end && !is_letter(*p)) ++p;
    if (p == end) break;
    const char* const start = p;
    bool capitals = false;
    for (; p < end && is_letter(*p); ++p) capitals |= *p < 'a';  // 'A'..'Z' sort before 'a'
    std::string_view word(start, static_cast<std::size_t>(p - start));
    if (capitals) {
      lowered.assign(word);
      for (char& c : lowered) c = static_cast<char>(c | 0x20);
      word = lowered;
    }
    ++out.total;
    out.words.add(word, 1);
  }
}

bool is_not_letter(char c) { return !is_letter(c); }

/// Decompresses a .gz file block by block and hands `sink` the text up to the
/// last boundary character of each block, carrying the cut-off tail over, so
/// that no line (or word) is ever split. Returns the decompressed size.
template <class Sink>
std::uint64_t for_each_gz_block(const std::string& path, bool (*is_boundary)(char), Sink sink) {
  std::unique_ptr<gzFile_s, decltype(&gzclose)> in(gzopen(path.c_str(), "rb"), &gzclose);
  if (!in) throw os_error("cannot open", path);
  gzbuffer(in.get(), 256 * 1024);
  std::vector<char> buf(4 << 20);
  std::size_t kept = 0;
  std::uint64_t total = 0;
  for (;;) {
    if (kept == buf.size()) buf.resize(buf.size() * 2);  // a line longer than the buffer
    const int n = gzread(in.get(), buf.data() + kept, static_cast<unsigned>(buf.size() - kept));
    if (n < 0) {
      int err = 0;
      throw std::runtime_error(std::string("cannot decompress: ") + gzerror(in.get(), &err));  // names the file
    }
    if (n == 0) break;
    total += static_cast<std::uint64_t>(n);
    const std::size_t have = kept + static_cast<std::size_t>(n);
    std::size_t cut = have;
    while (cut > 0 && !is_boundary(buf[cut - 1])) --cut;
    sink(std::string_view(buf.data(), cut));
    kept = have - cut;
    std::memmove(buf.data(), buf.data() + cut, kept);
  }
  // gzread reports a truncated stream as a plain end of file; gzerror does not.
  int err = Z_OK;
  const char* msg = gzerror(in.get(), &err);
  if (err != Z_OK) throw std::runtime_error(std::string("cannot decompress: ") + msg);  // names the file
  sink(std::string_view(buf.data(), kept));  // a last line without a newline
  return total;
}

/// The map step of the ngram mode: one chunk (or .gz file) -> word counts.
word_counts count_ngram_chunk(const chunk& c) {
  if (!is_gz(c.path)) return count_file_chunk(c);
  word_counts out;
  ngram_counter counter(out);
  out.bytes = for_each_gz_block(c.path, is_newline, [&](std::string_view t) { counter.add_text(t); });
  counter.finish();
  return out;
}

/// The map step of --text: one chunk (or .gz file) -> word counts.
word_counts count_text_chunk(const chunk& c) {
  word_counts out;
  if (is_gz(c.path)) {
    out.bytes = for_each_gz_block(c.path, is_not_letter, [&](std::string_view t) { count_text_words(t, out); });
  } else {
    for_each_block(c.path, c.offset, c.length, is_not_letter, [&](std::string_view t) { count_text_words(t, out); });
    out.bytes = c.length;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Planning: files -> chunks, in the parent
// ---------------------------------------------------------------------------

/// Regular files named on the command line, and those under named
/// directories (sorted; symbolic links are not followed, so nothing counts twice).
std::vector<std::string> collect_files(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const auto& in : inputs) {
    if (fs::is_directory(in)) {
      std::vector<std::string> found;
      for (const auto& e : fs::recursive_directory_iterator(in, fs::directory_options::skip_permission_denied))
        if (e.is_regular_file() && !e.is_symlink()) found.push_back(e.path().string());
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(in)) {
      files.push_back(in);
    } else {
      throw std::runtime_error("no such file or directory: " + in);
    }
  }
  return files;
}

// ---------------------------------------------------------------------------
// Running and reporting
// ---------------------------------------------------------------------------

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double mb_per_s(std::uint64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) / (1024.0 * 1024.0) / seconds : 0.0;
}

/// Runs the map step over all chunks in the pool and reduces the results:
/// map_reduce folds the results of a batch inside the worker first. A run
/// longer than a second shows a progress bar on stderr (chunks come back one
/// per batch in ngram mode, so it moves with every chunk).
template <class Count>
word_counts run_pool(coshard::basic_pool& pool, const std::vector<chunk>& chunks, Count count,
                     std::optional<bool> hold_partials) {
  coshard::job_options options;
  options.progress = coshard::progress_bar({.label = "count", .unit = "chunks"});
  options.hold_partials = hold_partials;
  return pool.map_reduce(chunks, count, add_counts{}, word_counts{}, options);
}

/// The same map and reduce, one chunk after another in this process: --verify.
template <class Count>
word_counts run_sequential(const std::vector<chunk>& chunks, Count count) {
  word_counts total;
  for (const auto& c : chunks) merge_into(total, count(c));
  return total;
}

void print_summary(const word_counts& result, std::size_t files, std::size_t chunks, double seconds,
                   std::size_t top, const std::vector<std::string>& lookups, bool text_mode) {
  std::printf("files: %zu\n", files);
  std::printf("chunks: %zu\n", chunks);
  std::printf("bytes: %llu\n", static_cast<unsigned long long>(result.bytes));
  std::printf("seconds: %.3f\n", seconds);
  std::printf("mb_per_s: %.1f\n", mb_per_s(result.bytes, seconds));
  if (!text_mode) std::printf("lines: %llu\n", static_cast<unsigned long long>(result.lines));
  std::printf("distinct_words: %zu\n", result.words.size());
  std::printf("total: %llu\n", static_cast<unsigned long long>(result.total));
  if (!text_mode) std::printf("bad_lines: %llu\n", static_cast<unsigned long long>(result.bad_lines));

  // Top K by count, ties by word, so the listing is the same on every run.
  std::vector<std::pair<std::string_view, std::uint64_t>> entries;
  entries.reserve(result.words.size());
  result.words.for_each([&](std::string_view word, std::uint64_t count) { entries.emplace_back(word, count); });
  const auto k = std::min(top, entries.size());
  std::partial_sort(entries.begin(), entries.begin() + static_cast<std::ptrdiff_t>(k), entries.end(),
                    [](const auto& x, const auto& y) {
                      return x.second != y.second ? x.second > y.second : x.first < y.first;
                    });
  for (std::size_t i = 0; i < k; ++i)
    std::printf("top %zu: %.*s %llu\n", i + 1, static_cast<int>(entries[i].first.size()), entries[i].first.data(),
                static_cast<unsigned long long>(entries[i].second));

  for (auto word : lookups) {
    if (text_mode)  // --text counts lowercased words
      std::transform(word.begin(), word.end(), word.begin(), [](char c) { return is_letter(c) ? c | 0x20 : c; });
    std::printf("word: %s %llu\n", word.c_str(), static_cast<unsigned long long>(result.words.count_of(word)));
  }
}


}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Total match_count per word of Google Books Ngram 1-gram files (plain or .gz), "
               "on every core with a coshard process pool. With no arguments, generates "
               "/tmp/coshard-ngram-200mb.tsv (if missing) and counts it."};
  std::vector<std::string> inputs;
  bool text_mode = false;
  std::size_t workers = 0;
  double chunk_mb = 8;
  std::size_t top = 10;
  std::vector<std::string> lookups{"Aardvark"};
  bool verify = false;
  bool sequential = false;
  std::string generate_path;
  double size_mb = 200;
  std::uint64_t seed = 1;
  std::string dict = "/usr/share/dict/american-english";
  app.add_option("inputs", inputs, "1-gram files (plain or .gz) or directories of them; text with --text");
  app.add_flag("--text", text_mode, "count words (lowercased runs of letters) in ordinary text files instead");
  app.add_option("--workers", workers, "worker processes; 0 = one per core")->capture_default_str();
  app.add_option("--chunk-mb", chunk_mb, "size of the chunks plain files are cut into")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--top", top, "how many of the most frequent words to print")->capture_default_str();
  // One word per --word: a repeatable option must not swallow the file names after it.
  app.add_option("--word", lookups, "a word whose count to print (repeat for more)")
      ->capture_default_str()
      ->allow_extra_args(false);
  app.add_flag("--verify", verify, "also count sequentially in this process, compare and print the speedup");
  app.add_flag("--sequential", sequential,
               "count in this process instead, each plain file in one pass, with no pool: the baseline")
      ->excludes("--verify");
  auto* gen = app.add_option("--generate", generate_path, "write a generated 1-gram file to this path and exit");
  app.add_option("--size-mb", size_mb, "size of the generated file")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed of the generator")->capture_default_str();
  app.add_option("--dict", dict, "word list the generator draws from")->capture_default_str();
  std::string hold = "auto";
  app.add_option("--hold-partials", hold,
                 "whether workers keep their partial word table across chunks until the pool asks for it "
                 "(job_options::hold_partials; auto: only on other MPI ranks)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "on", "off"}));
  bool use_mpi = false;
  app.add_flag("--mpi", use_mpi,
               "run across the ranks of an MPI job (start with mpirun): every rank forks --workers workers "
               "(default 1), rank 0 counts");
  gen->excludes("inputs");
  CLI11_PARSE(app, argc, argv);
#if !COSHARD_EXAMPLE_MPI
  if (use_mpi) {
    std::fprintf(stderr, "ngram_count: --mpi: this build has no MPI (install libopenmpi-dev and rebuild)\n");
    return 2;
  }
#endif

  ngram::keep_large_blocks_in_heap();  // before the pool forks: the workers inherit it

  try {
#if COSHARD_EXAMPLE_MPI
    // Every rank builds the cluster first; all but the root then serve it.
    std::unique_ptr<coshard::mpi::cluster> cluster;
    if (use_mpi) {
      coshard::mpi::cluster_options options{.workers_per_rank = workers ? workers : 1};
      if (text_mode)
        options.pool.target_batch_time = std::chrono::milliseconds(100);
      else
        options.pool.batch_size = 1;
      cluster = std::make_unique<coshard::mpi::cluster>(argc, argv, options);
      if (!cluster->is_root()) return cluster->serve();
    }
#endif
    const auto size_bytes = static_cast<std::uint64_t>(size_mb * 1024 * 1024);
    if (!generate_path.empty()) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto st = generate_file(generate_path, size_bytes, seed, dict);
      std::printf("generated: %s\nbytes: %llu\nlines: %llu\nseconds: %.3f\n", generate_path.c_str(),
                  static_cast<unsigned long long>(st.bytes), static_cast<unsigned long long>(st.lines),
                  seconds_since(t0));
      return 0;
    }
    if (inputs.empty()) {  // the no-argument demo
      if (text_mode) throw std::runtime_error("--text needs files or directories to read");
      const std::string demo = "/tmp/coshard-ngram-200mb.tsv";
      if (!fs::exists(demo)) {
        std::fprintf(stderr, "generating %s (200 MB)...\n", demo.c_str());
        generate_file(demo, std::uint64_t{200} << 20, seed, dict);
      }
      inputs.push_back(demo);
    }

    const auto files = collect_files(inputs);
    auto count_ngram = [](const chunk& c) { return count_ngram_chunk(c); };
    auto count_text = [](const chunk& c) { return count_text_chunk(c); };
    if (sequential) {  // one chunk per file: the simple count the pool is measured against
      const auto whole_files = plan_chunks(files, std::numeric_limits<std::uint64_t>::max() / 2,
                                           text_mode ? is_not_letter : is_newline);
      std::printf("mode: %s\nworkers: 0\n", text_mode ? "text" : "ngram");
      const auto t0 = std::chrono::steady_clock::now();
      const word_counts result =
          text_mode ? run_sequential(whole_files, count_text) : run_sequential(whole_files, count_ngram);
      print_summary(result, files.size(), whole_files.size(), seconds_since(t0), top, lookups, text_mode);
      return 0;
    }
    const auto chunks = plan_chunks(files, std::max<std::uint64_t>(1, static_cast<std::uint64_t>(chunk_mb * 1024 * 1024)),
                                    text_mode ? is_not_letter : is_newline);
    // Every batch's partial map crosses to the parent, which decodes and
    // merges it alone: a few large batches keep that serial part small.
    // Ngram chunks take tens of milliseconds each, and hold words of their
    // own stretch of a sorted file: one chunk per batch lets the workers
    // finish together. Text files are small and share most of their words:
    // batches of about 100 ms fold many files into one partial in the worker.
    std::unique_ptr<coshard::process_pool> local;
    coshard::basic_pool* pool = nullptr;
    std::size_t pool_workers = 0;
#if COSHARD_EXAMPLE_MPI
    if (cluster) {
      pool = cluster.get();
      pool_workers = cluster->size();
      std::printf("ranks: %d\n", cluster->ranks());
    }
#endif
    if (!pool) {
      coshard::pool_options options{.workers = workers};
      if (text_mode)
        options.target_batch_time = std::chrono::milliseconds(100);
      else
        options.batch_size = 1;
      local = std::make_unique<coshard::process_pool>(std::move(options));
      pool = local.get();
      pool_workers = local->size();
    }
    const std::optional<bool> hold_partials = hold == "auto" ? std::nullopt : std::optional<bool>(hold == "on");
    std::printf("mode: %s\nworkers: %zu\n", text_mode ? "text" : "ngram", pool_workers);
    std::fflush(stdout);  // before the progress line, when stdout is a file or pipe

    auto t0 = std::chrono::steady_clock::now();
    const word_counts result =
        text_mode ? run_pool(*pool, chunks, count_text, hold_partials)
                  : run_pool(*pool, chunks, count_ngram, hold_partials);
    const double seconds = seconds_since(t0);
    print_summary(result, files.size(), chunks.size(), seconds, top, lookups, text_mode);

    if (verify) {
      t0 = std::chrono::steady_clock::now();
      const word_counts seq = text_mode ? run_sequential(chunks, count_text) : run_sequential(chunks, count_ngram);
      const double seq_seconds = seconds_since(t0);
      std::printf("sequential_seconds: %.3f\n", seq_seconds);
      std::printf("sequential_mb_per_s: %.1f\n", mb_per_s(seq.bytes, seq_seconds));
      std::printf("speedup: %.2f\n", seconds > 0 ? seq_seconds / seconds : 0.0);
      const bool ok = result == seq;
      std::printf("verify: %s\n", ok ? "ok" : "MISMATCH");
      if (!ok) return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ngram_count: %s\n", e.what());
    return 1;
  }
}
