// ngram_count - the map-reduce workload of the Python articles: total
// match_count per word over Google Books Ngram 1-gram files, on every core.
//
// The parent only plans the work: it cuts each plain file into chunks on line
// boundaries and sends (path, offset, length) items to the pool. Each worker
// mmaps its chunk itself, so no file data crosses a socket; it returns a
// word -> count map; the maps are merged by the pool's map_reduce with a
// custom reducer (the result also carries a bad-line count), inside each
// worker for the items of one batch, then in the parent.
// `.gz` files cannot be split without decompressing them, so each is one item:
// per-file parallelism, as in the articles, which read one .gz file per letter.
//
//   ngram_count                          generate /tmp/coshard-ngram-200mb.tsv if missing, count it
//   ngram_count FILE_OR_DIR... [--verify] [--workers N] [--chunk-mb M] [--top K] [--word W]...
//   ngram_count --text DIR_OR_FILE...    count words (lowercased letter runs) in ordinary text
//   ngram_count --generate FILE --size-mb N [--seed S]
//
// Output is one `key: value` per line so that scripts can read it
// (see smoke_test.sh next to this file).
#include <coshard/coshard.hpp>

#include <CLI/CLI.hpp>
#include <zlib.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fs = std::filesystem;

namespace {

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

/// Lets the word map be searched with a std::string_view into the mapped file:
/// a std::string is built only when a word is seen for the first time.
struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using word_map = std::unordered_map<std::string, std::uint64_t, string_hash, std::equal_to<>>;

/// A map result plus the counters that cannot live in the map itself.
struct word_counts {
  word_map words;
  std::uint64_t total = 0;      // sum of match_count (--text: number of words)
  std::uint64_t lines = 0;      // non-empty lines seen (--text: 0)
  std::uint64_t bad_lines = 0;  // lines that are not `word TAB year TAB count TAB volumes`
  std::uint64_t bytes = 0;      // bytes scanned (decompressed bytes for .gz)

  template <class Archive>
  void serialize(Archive& ar) {
    ar(words, total, lines, bad_lines, bytes);
  }
};

void merge_into(word_counts& acc, word_counts&& part) {
  // coshard's keyed merge moves the smaller map's nodes into the larger one.
  acc.words = coshard::merge_maps<>{}(std::move(acc.words), std::move(part.words));
  acc.total += part.total;
  acc.lines += part.lines;
  acc.bad_lines += part.bad_lines;
  acc.bytes += part.bytes;
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

/// Reads the number at `p` and moves `p` past it: false unless there is at
/// least one digit and the value fits (from_chars also refuses signs).
bool read_number(const char*& p, const char* end, std::uint64_t& value) {
  auto [next, ec] = std::from_chars(p, end, value);
  p = next;
  return ec == std::errc{};
}

/// Moves `p` past the expected separator.
bool read_char(const char*& p, const char* end, char c) {
  if (p == end || *p != c) return false;
  ++p;
  return true;
}

/// Adds 1-gram lines to a word_counts. Lines are about 20 bytes, so the parse
/// is one pass over each line, without a search for the end first; the word
/// stays a string_view into the file. Google's files are sorted by word, with
/// one line per year, so consecutive lines usually repeat the word: the last
/// entry is kept at hand and most lines cost no hash lookup at all.
class ngram_counter {
 public:
  explicit ngram_counter(word_counts& out) : out_(out) {}

  void add_text(std::string_view text) {
    const char* p = text.data();
    const char* const end = p + text.size();
    while (p < end) p = add_line(p, end);
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
    if (last_count_ == nullptr || word != last_word_) {
      auto it = out_.words.find(word);
      if (it == out_.words.end()) it = out_.words.emplace(std::string(word), 0).first;
      last_word_ = it->first;  // map nodes never move, so the view stays valid
      last_count_ = &it->second;
    }
    *last_count_ += count;
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
  std::string_view last_word_;
  std::uint64_t* last_count_ = nullptr;
};

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
    if (auto it = out.words.find(word); it != out.words.end())
      ++it->second;
    else
      out.words.emplace(std::string(word), 1);
  }
}

bool is_newline(char c) { return c == '\n'; }
bool is_not_letter(char c) { return !is_letter(c); }

bool is_gz(const std::string& path) { return path.ends_with(".gz"); }

std::runtime_error os_error(const std::string& what, const std::string& path) {
  return std::runtime_error(what + " " + path + ": " + std::strerror(errno));
}

/// A read-only mapping of [offset, offset + length) of a file.
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
  word_counts out;
  ngram_counter counter(out);
  if (is_gz(c.path)) {
    out.bytes = for_each_gz_block(c.path, is_newline, [&](std::string_view t) { counter.add_text(t); });
  } else {
    const mapped_range map(c.path, c.offset, c.length);
    counter.add_text(map.text());
    out.bytes = c.length;
  }
  return out;
}

/// The map step of --text: one chunk (or .gz file) -> word counts.
word_counts count_text_chunk(const chunk& c) {
  word_counts out;
  if (is_gz(c.path)) {
    out.bytes = for_each_gz_block(c.path, is_not_letter, [&](std::string_view t) { count_text_words(t, out); });
  } else {
    const mapped_range map(c.path, c.offset, c.length);
    count_text_words(map.text(), out);
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

/// The offset just past the first boundary character at or after `pos`
/// (or `size`): where a chunk may end without splitting a line or word.
std::uint64_t next_boundary(int fd, std::uint64_t pos, std::uint64_t size, bool (*is_boundary)(char)) {
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
std::vector<chunk> plan_chunks(const std::vector<std::string>& files, std::uint64_t chunk_bytes,
                               bool (*is_boundary)(char)) {
  std::vector<chunk> chunks;
  for (const auto& path : files) {
    const std::uint64_t size = fs::file_size(path);
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

std::vector<std::string> load_vocabulary(const std::string& dict) {
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
generate_stats generate(const std::string& path, std::uint64_t size_bytes, std::uint64_t seed,
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
generate_stats generate_file(const std::string& path, std::uint64_t size_bytes, std::uint64_t seed,
                             const std::string& dict) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    auto st = generate(tmp, size_bytes, seed, dict);
    fs::rename(tmp, path);
    return st;
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
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

/// Runs the map step over all chunks in the pool and reduces the results.
/// map_reduce folds the results of a batch inside the worker, but reports
/// nothing until the end. For a progress line each chunk's result must arrive
/// on its own (for_each_result), to be merged here. Ngram chunks travel one
/// per batch anyway, so streaming them costs nothing; --text batches many
/// small files, and streaming them would send the parent one map per file.
template <class Count>
word_counts run_pool(coshard::process_pool& pool, const std::vector<chunk>& chunks, Count count,
                     bool progress) {
  if (!progress) return pool.map_reduce(chunks, count, add_counts{}, word_counts{});

  word_counts total;
  std::size_t done = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto shown = t0;
  pool.for_each_result(chunks, count, [&](std::size_t, word_counts part) {
    merge_into(total, std::move(part));
    const auto now = std::chrono::steady_clock::now();
    if (++done == chunks.size() || now - shown >= std::chrono::milliseconds(100)) {  // a few updates a second
      shown = now;
      std::fprintf(stderr, "\r%zu/%zu chunks, %.0f MB/s   ", done, chunks.size(),
                   mb_per_s(total.bytes, seconds_since(t0)));
    }
  });
  std::fprintf(stderr, "\n");
  return total;
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
  std::vector<const word_map::value_type*> entries;
  entries.reserve(result.words.size());
  for (const auto& e : result.words) entries.push_back(&e);
  const auto k = std::min(top, entries.size());
  std::partial_sort(entries.begin(), entries.begin() + static_cast<std::ptrdiff_t>(k), entries.end(),
                    [](auto* x, auto* y) { return x->second != y->second ? x->second > y->second : x->first < y->first; });
  for (std::size_t i = 0; i < k; ++i)
    std::printf("top %zu: %s %llu\n", i + 1, entries[i]->first.c_str(),
                static_cast<unsigned long long>(entries[i]->second));

  for (auto word : lookups) {
    if (text_mode)  // --text counts lowercased words
      std::transform(word.begin(), word.end(), word.begin(), [](char c) { return is_letter(c) ? c | 0x20 : c; });
    const auto it = result.words.find(word);
    std::printf("word: %s %llu\n", word.c_str(),
                static_cast<unsigned long long>(it == result.words.end() ? 0 : it->second));
  }
}

bool same_result(const word_counts& a, const word_counts& b) {
  return a.total == b.total && a.lines == b.lines && a.bad_lines == b.bad_lines && a.bytes == b.bytes &&
         a.words == b.words;
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
  app.add_option("--word", lookups, "words whose count to print (repeatable)")->capture_default_str();
  app.add_flag("--verify", verify, "also count sequentially in this process, compare and print the speedup");
  auto* gen = app.add_option("--generate", generate_path, "write a generated 1-gram file to this path and exit");
  app.add_option("--size-mb", size_mb, "size of the generated file")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed of the generator")->capture_default_str();
  app.add_option("--dict", dict, "word list the generator draws from")->capture_default_str();
  gen->excludes("inputs");
  CLI11_PARSE(app, argc, argv);

  try {
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
    const auto chunks = plan_chunks(files, std::max<std::uint64_t>(1, static_cast<std::uint64_t>(chunk_mb * 1024 * 1024)),
                                    text_mode ? is_not_letter : is_newline);
    // Every batch's partial map crosses to the parent, which decodes and
    // merges it alone: a few large batches keep that serial part small.
    // Ngram chunks take tens of milliseconds each, and hold words of their
    // own stretch of a sorted file: one chunk per batch lets the workers
    // finish together. Text files are small and share most of their words:
    // batches of about 100 ms fold many files into one partial in the worker.
    coshard::pool_options options{.workers = workers};
    if (text_mode)
      options.target_batch_time = std::chrono::milliseconds(100);
    else
      options.batch_size = 1;
    coshard::process_pool pool{std::move(options)};
    std::printf("mode: %s\nworkers: %zu\n", text_mode ? "text" : "ngram", pool.size());
    std::fflush(stdout);  // before the progress line, when stdout is a file or pipe

    auto count_ngram = [](const chunk& c) { return count_ngram_chunk(c); };
    auto count_text = [](const chunk& c) { return count_text_chunk(c); };
    const bool progress = !text_mode && ::isatty(STDERR_FILENO);
    auto t0 = std::chrono::steady_clock::now();
    const word_counts result =
        text_mode ? run_pool(pool, chunks, count_text, false) : run_pool(pool, chunks, count_ngram, progress);
    const double seconds = seconds_since(t0);
    print_summary(result, files.size(), chunks.size(), seconds, top, lookups, text_mode);

    if (verify) {
      t0 = std::chrono::steady_clock::now();
      const word_counts seq = text_mode ? run_sequential(chunks, count_text) : run_sequential(chunks, count_ngram);
      const double seq_seconds = seconds_since(t0);
      std::printf("sequential_seconds: %.3f\n", seq_seconds);
      std::printf("sequential_mb_per_s: %.1f\n", mb_per_s(seq.bytes, seq_seconds));
      std::printf("speedup: %.2f\n", seconds > 0 ? seq_seconds / seconds : 0.0);
      const bool ok = same_result(result, seq);
      std::printf("verify: %s\n", ok ? "ok" : "MISMATCH");
      if (!ok) return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ngram_count: %s\n", e.what());
    return 1;
  }
}
