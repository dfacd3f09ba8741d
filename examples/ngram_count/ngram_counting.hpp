// ngram_counting.hpp - the counting core of ngram_count, shared with
// benchmarks/ngram/bench_ngram.cpp: the work item and result types that cross
// between the parent and the workers (the word table is in word_table.hpp),
// the 1-gram line parser, counting one chunk (a byte range) of a plain file,
// cutting files into chunks on line boundaries, the allocator setting both
// use, and the generator of synthetic 1-gram files.
//
// Plain files only: `.gz` input (zlib) stays in main.cpp, so that users of
// this header need not link zlib. Everything is inline, in namespace `ngram`.
#pragma once

#include "word_table.hpp"

#include <fcntl.h>
#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace ngram {

// ---------------------------------------------------------------------------
// Work items and results: what crosses between the parent and the workers
// ---------------------------------------------------------------------------

/// One piece of work: a byte range of a plain file (cut on a line boundary by
/// the parent), or a whole `.gz` file.
struct chunk {
  std::string path;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(path, offset, length);
  }
};

/// A map result plus the counters that cannot live in the map itself.
///
/// A decoded word_counts holds its words in `arrived`, not in `words`: the
/// parent decodes each partial result only to add it to its accumulator, and
/// adding a list of entries to a table needs no index of the list. Only the
/// first partial, which the accumulator takes over, gets indexed. merge_into
/// leaves `arrived` empty, so the result of a reduction, and anything the
/// counting functions return, has only `words`.
struct word_counts {
  word_table words;
  std::uint64_t total = 0;      // sum of match_count (--text: number of words)
  std::uint64_t lines = 0;      // non-empty lines seen (--text: 0)
  std::uint64_t bad_lines = 0;  // lines that are not `word TAB year TAB count TAB volumes`
  std::uint64_t bytes = 0;      // bytes scanned (decompressed bytes for .gz)
  word_table::arrival arrived;  // decoded, not yet in `words` (see above)

  /// Writes `words` (a word_counts is sent before it is ever decoded, so
  /// `arrived` is empty), then the counters.
  template <class Archive>
  void save(Archive& ar) const {
    ar(words, total, lines, bad_lines, bytes);
  }
  /// Reads what save wrote, the words into `arrived`.
  template <class Archive>
  void load(Archive& ar) {
    words = {};
    ar(arrived, total, lines, bad_lines, bytes);
  }
  /// Moves the entries of `arrived` into `words`.
  void settle() {
    if (arrived.empty()) return;
    if (words.empty())
      words = word_table(std::move(arrived));
    else
      words.add_all(arrived);
    arrived = {};
  }
  friend bool operator==(const word_counts&, const word_counts&) = default;
};

/// Adds `part` into `acc`: the words' counts and the counters. The smaller
/// table is added to the larger, so the first partial that reaches an empty
/// accumulator is taken over as it is, with no per-word work.
inline void merge_into(word_counts& acc, word_counts&& part) {
  acc.settle();
  if (acc.words.size() < part.words.size()) swap(acc.words, part.words);
  acc.words.add_all(part.words);
  if (acc.words.empty() && !part.arrived.empty())
    acc.words = word_table(std::move(part.arrived));
  else
    acc.words.add_all(part.arrived);
  acc.total += part.total;
  acc.lines += part.lines;
  acc.bad_lines += part.bad_lines;
  acc.bytes += part.bytes;
}

/// Makes glibc serve large blocks from the heap and never give freed memory
/// back. By default every block of 128 KiB or more is a fresh mmap, faulted
/// in page by page and unmapped on free: the word tables as they grow, and
/// the partial results the parent and the workers send and receive. Reusing
/// pages already faulted in took one worker's CPU (parent and worker) on the
/// 100 MB generated file from 1.08x to 1.04x the one-process count's
/// (medians of 30 interleaved pairs per build), and left the one-process
/// count's within noise. Call it before the pool forks: workers inherit it.
inline void keep_large_blocks_in_heap() {
  ::mallopt(M_MMAP_MAX, 0);
  ::mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
}

/// The reducer the pool runs in the workers and in the parent. It must be
/// shippable (empty), associative and commutative: merging counts is all three.
struct add_counts {
  word_counts operator()(word_counts a, word_counts b) const {
    merge_into(a, std::move(b));
    return a;
  }
};

// ---------------------------------------------------------------------------
// Counting: the map step, run in the workers (and in the parent for --verify)
// ---------------------------------------------------------------------------

/// Reads the decimal number at `p` and moves `p` past it: false unless there
/// is at least one digit and the value fits in 64 bits (a sign is not a
/// digit). A plain loop: with std::from_chars the whole count took 15% longer.
inline bool read_number(const char*& p, const char* end, std::uint64_t& value) {
  const char* q = p;
  std::uint64_t v = 0;
  for (; q < end; ++q) {
    const unsigned digit = static_cast<unsigned char>(*q) - unsigned{'0'};
    if (digit > 9) break;
    if (__builtin_mul_overflow(v, 10u, &v) || __builtin_add_overflow(v, digit, &v)) return false;
  }
  if (q == p) return false;
  p = q;
  value = v;
  return true;
}

/// Moves `p` past the expected separator.
inline bool read_char(const char*& p, const char* end, char c) {
  if (p == end || *p != c) return false;
  ++p;
  return true;
}

/// Adds 1-gram lines to a word_counts. Lines are about 20 bytes, so the parse
/// is one pass over each line, without a search for the end first; the word
/// stays a string_view into the file. Google's files are sorted by word, with
/// one line per year, so consecutive lines usually repeat the word: counts are
/// summed while the word repeats and added to the table once per run of it.
/// finish() adds the last run.
class ngram_counter {
 public:
  explicit ngram_counter(word_counts& out) : out_(out) {}

  /// Counts every line of `text` (the last one may lack its newline).
  void add_text(std::string_view text) {
    const char* p = text.data();
    const char* const end = p + text.size();
    while (p < end) p = add_line(p, end);
  }

  /// Adds the counts of the last word seen to the table.
  void finish() {
    if (run_lines_ != 0) out_.words.add(run_word_, run_count_);
    run_lines_ = 0;
  }

 private:
  // Counts the line starting at `p`; returns where the next one starts.
  const char* add_line(const char* p, const char* end) {
    const char* const line = p;
    while (p < end && *p != '\t' && *p != '\n') ++p;
    const std::string_view word(line, static_cast<std::size_t>(p - line));
    std::uint64_t year = 0, count = 0, volumes = 0;
    const bool ok = !word.empty() && read_char(p, end, '\t') && read_number(p, end, year) &&
                    read_char(p, end, '\t') && read_number(p, end, count) && read_char(p, end, '\t') &&
                    read_number(p, end, volumes);
    (void)read_char(p, end, '\r');
    if (!ok || (p != end && *p != '\n')) return skip_bad_line(line, p, end);
    ++out_.lines;
    out_.total += count;
    if (run_lines_ == 0 || word != run_word_) {
      finish();
      run_word_.assign(word);  // the text's buffer is reused: keep a copy
      run_count_ = 0;
    }
    ++run_lines_;
    run_count_ += count;
    return p == end ? end : p + 1;
  }

  // A line that is not `word TAB year TAB count TAB volumes` is counted as bad
  // (a blank one is ignored); counting goes on at the next line.
  const char* skip_bad_line(const char* line, const char* p, const char* end) {
    const auto* nl = static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
    std::string_view text(line, static_cast<std::size_t>((nl ? nl : end) - line));
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (!text.empty()) {
      ++out_.lines;
      ++out_.bad_lines;
    }
    return nl ? nl + 1 : end;
  }

  word_counts& out_;
  std::string run_word_;         // the word of the current run of lines
  std::uint64_t run_count_ = 0;  // its counts so far in this run
  std::uint64_t run_lines_ = 0;  // lines in this run; 0 before the first
};

/// Where a 1-gram chunk may end: after a newline.
inline bool is_newline(char c) { return c == '\n'; }

/// A gzip file, by its name: read whole by main.cpp, never mmapped.
inline bool is_gz(const std::string& path) { return path.ends_with(".gz"); }

/// An error naming the path and errno's message.
inline std::runtime_error os_error(const std::string& what, const std::string& path) {
  return std::runtime_error(what + " " + path + ": " + std::strerror(errno));
}

/// Calls `sink(text)` with the bytes [offset, offset + length) of a file in
/// pieces that each end just after a boundary character (the last one at the
/// end of the range), so that no line (or word) is split between two calls.
/// The bytes are read with pread, in blocks of 1 MiB, into a buffer that the
/// calling thread keeps for its next call.
///
/// Why not mmap: on the 2-core development VM, counting the 200 MB generated
/// file through one mmap of it (MAP_POPULATE, MADV_SEQUENTIAL) took 0.44 s of
/// CPU, through this function 0.27 s, in one process and in chunks alike.
/// The difference is user time spent on the first touch of each freshly
/// mapped page-cache page (MAP_POPULATE leaves few page faults), paid again
/// for every new mapping; pread copies through the kernel's own mapping into
/// a buffer that stays in the cache.
template <class Sink>
void for_each_block(const std::string& path, std::uint64_t offset, std::uint64_t length,
                    bool (*is_boundary)(char), Sink sink) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw os_error("cannot open", path);
  struct closer {
    int fd;
    ~closer() { ::close(fd); }
  } const close_fd{fd};
  thread_local std::vector<char> buf(std::size_t{1} << 20);
  std::size_t kept = 0;  // the unfinished line carried over from the last block
  std::uint64_t pos = offset;
  const std::uint64_t end = offset + length;
  while (pos < end) {
    if (kept == buf.size()) buf.resize(buf.size() * 2);  // a line longer than the buffer
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size() - kept, end - pos));
    const ssize_t n = ::pread(fd, buf.data() + kept, want, static_cast<off_t>(pos));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw os_error("cannot read", path);
    if (n == 0) throw std::runtime_error("cannot read " + path + ": the file is shorter than when it was planned");
    pos += static_cast<std::uint64_t>(n);
    const std::size_t have = kept + static_cast<std::size_t>(n);
    std::size_t cut = have;
    if (pos < end)
      while (cut > 0 && !is_boundary(buf[cut - 1])) --cut;
    if (cut > 0) sink(std::string_view(buf.data(), cut));
    kept = have - cut;
    std::memmove(buf.data(), buf.data() + cut, kept);
  }
}

/// The map step for a plain file: reads the chunk's byte range and counts its
/// 1-gram lines. (.gz chunks are main.cpp's: they need zlib.)
inline word_counts count_file_chunk(const chunk& c) {
  word_counts out;
  ngram_counter counter(out);
  for_each_block(c.path, c.offset, c.length, is_newline, [&](std::string_view text) { counter.add_text(text); });
  counter.finish();
  out.bytes = c.length;
  return out;
}

/// A read-only mapping of [offset, offset + length) of a file. The counting
/// functions read with pread instead (see for_each_block); bench_ngram keeps
/// an mmap variant of its single-process baseline to show the difference.
class mapped_range {
 public:
  mapped_range(const std::string& path, std::uint64_t offset, std::uint64_t length) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw os_error("cannot open", path);
    const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t start = offset / page * page;  // mmap offsets must be page aligned
    skip_ = offset - start;
    size_ = skip_ + length;
    // MAP_POPULATE faults the whole chunk in up front: one call instead of a
    // page fault every few pages of the scan.
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, static_cast<off_t>(start));
    ::close(fd);
    if (p == MAP_FAILED) throw os_error("cannot mmap", path);
    addr_ = static_cast<const char*>(p);
    ::madvise(p, size_, MADV_SEQUENTIAL);
  }
  ~mapped_range() { ::munmap(const_cast<char*>(addr_), size_); }
  mapped_range(const mapped_range&) = delete;
  mapped_range& operator=(const mapped_range&) = delete;

  [[nodiscard]] std::string_view text() const { return {addr_ + skip_, size_ - skip_}; }

 private:
  const char* addr_ = nullptr;
  std::uint64_t skip_ = 0;
  std::uint64_t size_ = 0;
};

/// count_file_chunk through one mmap of the range instead of pread.
inline word_counts count_mapped_chunk(const chunk& c) {
  word_counts out;
  ngram_counter counter(out);
  const mapped_range map(c.path, c.offset, c.length);
  counter.add_text(map.text());
  counter.finish();
  out.bytes = c.length;
  return out;
}

// ---------------------------------------------------------------------------
// Planning: files -> chunks, in the parent
// ---------------------------------------------------------------------------

/// The offset just past the first boundary character at or after `pos`
/// (or `size`): where a chunk may end without splitting a line or word.
inline std::uint64_t next_boundary(int fd, std::uint64_t pos, std::uint64_t size, bool (*is_boundary)(char)) {
  char buf[64 * 1024];
  while (pos < size) {
    const ssize_t n = ::pread(fd, buf, sizeof buf, static_cast<off_t>(pos));
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; ++i)
      if (is_boundary(buf[i])) return pos + static_cast<std::uint64_t>(i) + 1;
    pos += static_cast<std::uint64_t>(n);
  }
  return size;
}

/// Cuts plain files into chunks of about `chunk_bytes`; a .gz file is one item.
inline std::vector<chunk> plan_chunks(const std::vector<std::string>& files, std::uint64_t chunk_bytes,
                                      bool (*is_boundary)(char)) {
  std::vector<chunk> chunks;
  for (const auto& path : files) {
    const std::uint64_t size = std::filesystem::file_size(path);
    if (size == 0) continue;
    if (is_gz(path)) {
      chunks.push_back({path, 0, size});
      continue;
    }
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw os_error("cannot open", path);
    for (std::uint64_t pos = 0; pos < size;) {
      std::uint64_t end = pos + chunk_bytes;
      // Extend the tentative end to the next boundary; searching from end - 1
      // keeps a chunk that already ends on one as it is.
      end = end >= size ? size : next_boundary(fd, end - 1, size, is_boundary);
      chunks.push_back({path, pos, end - pos});
      pos = end;
    }
    ::close(fd);
  }
  return chunks;
}

// ---------------------------------------------------------------------------
// The generator: a realistic 1-gram file
// ---------------------------------------------------------------------------

/// splitmix64: tiny, fast, and the same sequence everywhere (std:: engines'
/// distributions are not specified bit for bit, which --seed must be).
struct rng {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1p-53; }  // [0, 1)
};

/// The generator's vocabulary: the word list's lines without apostrophes or
/// tabs, plus "Aardvark", sorted byte-wise and without duplicates.
inline std::vector<std::string> load_vocabulary(const std::string& dict) {
  std::ifstream in(dict);
  if (!in) throw std::runtime_error("cannot read the word list " + dict);
  std::vector<std::string> words;
  for (std::string w; std::getline(in, w);)
    if (!w.empty() && w.find_first_of("'\t\r") == std::string::npos) words.push_back(w);  // no "aardvark's"
  words.push_back("Aardvark");  // the word the articles look up; the list only has "aardvark"
  // Google's files are sorted by word; byte order also puts "Aardvark" near the start.
  std::sort(words.begin(), words.end());
  words.erase(std::unique(words.begin(), words.end()), words.end());
  return words;
}

/// What the generator wrote.
struct generate_stats {
  std::uint64_t bytes = 0;
  std::uint64_t lines = 0;
};

/// Writes about `size_bytes` of `word TAB year TAB match_count TAB volume_count`
/// lines. Every word gets a random Zipf rank r: its total count is about
/// 2e9 * r^-1.07 and it appears in the last n(r) years up to 2012, n shrinking
/// with rank, with counts growing toward recent years as more books were printed.
/// Once the vocabulary is used up, it starts over with part-of-speech
/// suffixes (word_NOUN...), as the 2012 edition of the data has them.
inline generate_stats generate(const std::string& path, std::uint64_t size_bytes, std::uint64_t seed,
                        const std::string& dict) {
  const auto vocab = load_vocabulary(dict);
  rng r{seed};
  // Ranks: a Fisher-Yates shuffle of 1..V.
  std::vector<std::uint32_t> rank(vocab.size());
  for (std::size_t i = 0; i < rank.size(); ++i) rank[i] = static_cast<std::uint32_t>(i + 1);
  for (std::size_t i = rank.size() - 1; i > 0; --i) std::swap(rank[i], rank[r.next() % (i + 1)]);

  constexpr int first_year = 1500, last_year = 2012, max_years = last_year - first_year + 1;
  // Years per word: n(r) = clamp(a * r^-0.5, 1, 513), with `a` chosen by
  // bisection so that one pass over the vocabulary fills about the requested
  // size; bigger sizes take several passes.
  std::vector<double> word_total(vocab.size());
  for (std::size_t i = 0; i < vocab.size(); ++i) word_total[i] = 2e9 * std::pow(double(rank[i]), -1.07);
  auto years_of = [&](double a, std::size_t i) {
    return std::clamp(static_cast<int>(a / std::sqrt(static_cast<double>(rank[i]))), 1, max_years);
  };
  auto pass_bytes = [&](double a) {  // estimated: word, year, two counts, four separators
    double bytes = 0;
    for (std::size_t i = 0; i < vocab.size(); ++i) {
      const int years = years_of(a, i);
      const double digits = std::floor(std::log10(std::max(1.0, word_total[i] / years))) + 1;
      bytes += years * (static_cast<double>(vocab[i].size()) + 8 + 2 * digits - 0.5);
    }
    return bytes;
  };
  double lo = 0, hi = 1e6;
  for (int i = 0; i < 40; ++i) {
    const double mid = (lo + hi) / 2;
    (pass_bytes(mid) < static_cast<double>(size_bytes) ? lo : hi) = mid;
  }
  const double a = hi;

  std::unique_ptr<std::FILE, decltype(&std::fclose)> out(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!out) throw os_error("cannot write", path);
  std::string buf;
  buf.reserve((1 << 20) + 256);
  generate_stats st;
  const double growth = std::exp(1.0 / 80);  // counts grow ~1.25% a year
  static const char* const suffixes[] = {"", "_NOUN", "_VERB", "_ADJ", "_ADV", "_PRON", "_DET",
                                         "_ADP", "_NUM", "_CONJ", "_PRT", "_X"};
  auto put = [&](std::uint64_t v) {
    char tmp[24];
    auto [end, ec] = std::to_chars(tmp, tmp + sizeof tmp, v);
    buf.append(tmp, end);
  };
  for (std::size_t pass = 0; st.bytes < size_bytes; ++pass) {
    const std::string suffix = pass < std::size(suffixes) ? suffixes[pass] : "_P" + std::to_string(pass);
    for (std::size_t i = 0; i < vocab.size() && st.bytes < size_bytes; ++i) {
      const int years = years_of(a, i);
      // Spread word_total over the years in proportion to growth^(year - first).
      const double weight_sum = (std::pow(growth, years) - 1) / (growth - 1);
      double per_year = word_total[i] / weight_sum;
      for (int y = last_year - years + 1; y <= last_year; ++y, per_year *= growth) {
        const auto count = static_cast<std::uint64_t>(std::max(1.0, per_year * (0.5 + r.uniform())));
        // Several matches per volume, more for frequent words.
        const auto vols = std::max<std::uint64_t>(
            1, static_cast<std::uint64_t>(static_cast<double>(count) / (1.0 + 9.0 * r.uniform())));
        const std::size_t before = buf.size();
        buf += vocab[i];
        buf += suffix;
        buf += '\t';
        put(static_cast<std::uint64_t>(y));
        buf += '\t';
        put(count);
        buf += '\t';
        put(vols);
        buf += '\n';
        st.bytes += buf.size() - before;
        ++st.lines;
        if (buf.size() >= (1 << 20)) {
          if (std::fwrite(buf.data(), 1, buf.size(), out.get()) != buf.size()) throw os_error("cannot write", path);
          buf.clear();
        }
        if (st.bytes >= size_bytes) break;
      }
    }
  }
  if (std::fwrite(buf.data(), 1, buf.size(), out.get()) != buf.size() || std::fflush(out.get()) != 0)
    throw os_error("cannot write", path);
  return st;
}

/// Generates into a temporary name and renames it, so that an interrupted run
/// never leaves a truncated file that a later run would take as complete.
inline generate_stats generate_file(const std::string& path, std::uint64_t size_bytes, std::uint64_t seed,
                             const std::string& dict) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    auto st = generate(tmp, size_bytes, seed, dict);
    std::filesystem::rename(tmp, path);
    return st;
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
}
}  // namespace ngram
