// tests/test_support.hpp - what every pool test checks at its end: no child
// process left, no file descriptor leaked.
#pragma once

#include <catch2/catch.hpp>
#include <coshard/process_pool.hpp>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <new>
#include <optional>
#include <set>
#include <thread>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace coshard_test {

struct process_entry {
  pid_t pid = 0;
  pid_t ppid = 0;
  char state = 0;
  std::string name;  // comm: "coshard-sup", "coshard-worker", ...
};

/// Every process on the machine, read from /proc.
inline std::vector<process_entry> all_processes() {
  std::vector<process_entry> out;
  DIR* d = ::opendir("/proc");
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::ifstream stat("/proc/" + std::string(e->d_name) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // Field 4 (ppid) follows the parenthesised command name, which may contain spaces.
    const auto open = line.find('(');
    const auto close = line.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    process_entry p;
    p.pid = pid;
    p.name = line.substr(open + 1, close - open - 1);
    std::istringstream rest(line.substr(close + 2));
    rest >> p.state >> p.ppid;
    out.push_back(p);
  }
  ::closedir(d);
  return out;
}

/// Processes descended from `root` (children, their children, ...), live or zombie.
inline std::vector<process_entry> descendants(pid_t root = ::getpid()) {
  const auto all = all_processes();
  std::vector<process_entry> out;
  std::vector<pid_t> frontier{root};
  while (!frontier.empty()) {
    const pid_t parent = frontier.back();
    frontier.pop_back();
    for (const auto& p : all)
      if (p.ppid == parent) {
        out.push_back(p);
        frontier.push_back(p.pid);
      }
  }
  return out;
}

/// Pids of every process descended from this one (the pools' supervisors and
/// their workers): empty once every pool is gone.
inline std::vector<pid_t> child_pids() {
  std::vector<pid_t> out;
  for (const auto& p : descendants()) out.push_back(p.pid);
  return out;
}

/// Pids of this process's live worker processes (any pool).
inline std::vector<pid_t> worker_pids() {
  std::vector<pid_t> out;
  for (const auto& p : descendants())
    if (p.name == "coshard-worker" && p.state != 'Z') out.push_back(p.pid);
  return out;
}

/// The number of live workers once it reaches `want`, or after 10 s:
/// replacements start in the background, after the job that lost a worker.
inline std::size_t workers_once_settled(std::size_t want) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    const std::size_t n = worker_pids().size();
    if (n == want || std::chrono::steady_clock::now() > deadline) return n;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

/// True while `pid` exists and is not a zombie.
inline bool alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  return line.substr(line.rfind(')') + 2, 1) != "Z";
}

/// The owner-death scenario: forks a child ("the owner") that runs
/// `build_pool` (which builds a pool, keeps it alive and returns the pids of
/// its workers and supervisor), SIGKILLs that child once it has reported
/// them, and waits up to 10 s for them all to go. Returns the pids (empty if
/// the child could not report `count` of them) and the seconds it took.
template <class BuildPool>
std::pair<std::vector<pid_t>, double> pool_pids_after_owner_sigkill(std::size_t count, BuildPool build_pool) {
  int report[2];
  if (::pipe(report) != 0) return {};
  const pid_t owner = ::fork();
  if (owner < 0) return {};
  if (owner == 0) {
    ::close(report[0]);
    try {
      const std::vector<pid_t> pids = build_pool();  // the pool lives on in build_pool's keeper
      (void)!::write(report[1], pids.data(), pids.size() * sizeof(pid_t));
      ::pause();  // until SIGKILLed
    } catch (...) {
    }
    ::_exit(1);  // never back into the test runner's frames
  }
  ::close(report[1]);
  std::vector<pid_t> pids(count);
  const auto want = static_cast<ssize_t>(count * sizeof(pid_t));
  const bool reported = ::read(report[0], pids.data(), static_cast<std::size_t>(want)) == want;
  ::close(report[0]);
  ::kill(owner, SIGKILL);
  ::waitpid(owner, nullptr, 0);
  if (!reported) return {};
  const auto t0 = std::chrono::steady_clock::now();
  auto any_alive = [&] { return std::any_of(pids.begin(), pids.end(), alive); };
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10) && any_alive())
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  return {pids, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

/// The targets of a process's fds (this one's by default), e.g. "pipe:[1234]".
inline std::set<std::string> fd_targets(const std::string& pid = "self") {
  std::set<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + pid + "/fd")) {
    std::error_code ec;
    const auto target = std::filesystem::read_symlink(e.path(), ec);
    if (!ec) out.insert(target.string());
  }
  return out;
}

/// Number of open file descriptors of this process.
inline int open_fd_count() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return -1;
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n - 1;  // the directory stream's own fd
}

/// Resident set size of this process in bytes.
inline long rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * ::sysconf(_SC_PAGESIZE);
}

/// Starts a new peak for peak_rss_bytes() (Linux 4.0+). False if it cannot.
inline bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.flush();
  return clear.good();
}

/// Highest resident set size of this process since reset_peak_rss(), in bytes.
inline long peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6)) * 1024;
  return -1;
}

/// Captures the fd count at construction; `leaked()` is how many more are open now.
struct fd_baseline {
  int at_start = open_fd_count();
  [[nodiscard]] int leaked() const { return open_fd_count() - at_start; }
};

/// Runs `body` with a pool built from `opts`, then checks that the pool,
/// once destroyed, left no child process and no descriptor behind.
template <class Pool, class Options, class Body>
void with_pool_of(const Options& opts, Body body) {
  fd_baseline fds;
  {
    Pool pool{opts};
    body(pool);
  }
  CHECK(child_pids().empty());
  CHECK(fds.leaked() == 0);
}

/// A reduce job whose partials are about 1.6 KB however many items they
/// cover: map_reduce_by_key over 0..items-1 in batches of 10, every item
/// giving the same 100 keys. Checks the merged counts; returns the batches
/// answered and the payload bytes received during the job (for checking
/// whether workers hold their partials or send one per batch).
template <class Pool>
std::pair<std::size_t, std::uint64_t> run_fixed_size_partials(Pool& pool, long items,
                                                              std::optional<bool> hold_partials = std::nullopt) {
  coshard::job_options o;
  o.batch_size = 10;
  o.hold_partials = hold_partials;
  std::vector<long> in(static_cast<std::size_t>(items));
  for (long i = 0; i < items; ++i) in[static_cast<std::size_t>(i)] = i;
  const auto before = pool.stats();
  auto counts = pool.map_reduce_by_key(
      in,
      [](long x) {
        std::map<long, long> m;
        for (long k = 0; k < 100; ++k) m[k] = x;
        return m;
      },
      std::plus<>{}, o);
  const auto after = pool.stats();
  REQUIRE(counts.size() == 100);
  CHECK(counts[42] == (items - 1) * items / 2);
  return {after.batches - before.batches, after.bytes_received - before.bytes_received};
}

/// with_pool_of for a coshard::process_pool.
template <class Body>
void with_pool(const coshard::pool_options& opts, Body body) {
  with_pool_of<coshard::process_pool>(opts, body);
}

/// `count` value-initialised Ts in memory shared with every process forked
/// after the call (a pool's supervisor and workers): for counting what
/// workers do. Call it before the pool exists. Never freed.
template <class T>
T* shared_with_forks(std::size_t count = 1) {
  void* p = ::mmap(nullptr, count * sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("shared_with_forks: mmap");
    std::abort();
  }
  T* values = static_cast<T*>(p);
  for (std::size_t i = 0; i < count; ++i) new (values + i) T();
  return values;
}

/// Worker output tests: what a task prints, and what must arrive.
namespace output_lines {

inline constexpr long per_item = 10'000;
inline const std::string payload(100, 'x');

/// The task: `per_item` lines "item I line N pid P stream S xxx...", odd
/// lines to stderr, even ones to stdout (printf and std::fprintf, as user
/// code would), all of one item at once with no pause.
inline long print_lines(long item) {
  const int pid = static_cast<int>(::getpid());
  for (long n = 0; n < per_item; ++n) {
    if (n % 2)
      std::fprintf(stderr, "item %ld line %ld pid %d stream 2 %s\n", item, n, pid, payload.c_str());
    else
      std::printf("item %ld line %ld pid %d stream 1 %s\n", item, n, pid, payload.c_str());
  }
  return item;
}

/// One line as it arrived: the worker it was attributed to, and its text.
struct arrived {
  long slot = -1;
  long pid = -1;
  int stream = 0;  // 0: not known (a prefixed line on stderr)
  std::string text;
};

/// Checks that `lines` are exactly the lines `items` printers wrote: each
/// whole, attributed to the pid that printed it, once, in order per stream,
/// with one slot per pid.
inline void check_lines(const std::vector<arrived>& lines, long items, long workers) {
  CHECK(lines.size() == static_cast<std::size_t>(items * per_item));
  // Per item and stream: the last line number seen, and how many arrived.
  std::vector<std::array<long, 3>> last(static_cast<std::size_t>(items), {-1, -1, -1});
  std::vector<std::array<long, 3>> count(static_cast<std::size_t>(items), {0, 0, 0});
  std::set<std::pair<long, long>> slot_of_pid;
  std::size_t bad = 0;
  for (const auto& l : lines) {
    long item = -1, n = -1, pid = -1;
    int stream = 0, used = 0;
    const bool whole = std::sscanf(l.text.c_str(), "item %ld line %ld pid %ld stream %d %n", &item, &n, &pid,
                                   &stream, &used) == 4 &&
                       used > 0 && l.text.substr(static_cast<std::size_t>(used)) == payload;
    const bool attributed = whole && pid == l.pid && l.slot >= 0 && l.slot < workers &&
                            (l.stream == 0 || l.stream == stream) && (stream == 1 || stream == 2);
    // Odd lines go to stderr, even ones to stdout, each stream in order.
    const bool in_order = attributed && item >= 0 && item < items && n < per_item && n % 2 == stream - 1 &&
                          n > last[static_cast<std::size_t>(item)][static_cast<std::size_t>(stream)];
    if (!in_order) {
      if (++bad <= 3) UNSCOPED_INFO("not a whole, attributed line in order: [" << l.slot << " " << l.pid << "] " << l.text);
      continue;
    }
    last[static_cast<std::size_t>(item)][static_cast<std::size_t>(stream)] = n;
    ++count[static_cast<std::size_t>(item)][static_cast<std::size_t>(stream)];
    slot_of_pid.insert({l.pid, l.slot});
  }
  CHECK(bad == 0);
  for (long item = 0; item < items; ++item) {
    CHECK(count[static_cast<std::size_t>(item)][1] == per_item / 2);
    CHECK(count[static_cast<std::size_t>(item)][2] == per_item / 2);
  }
  std::set<long> pids;
  for (auto& [pid, slot] : slot_of_pid) CHECK(pids.insert(pid).second);  // one slot per pid
}

/// Reads "[worker S pid P] text" lines as the default route writes them.
inline std::vector<arrived> parse_prefixed(const std::string& path) {
  std::vector<arrived> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    arrived a;
    int used = 0;
    if (std::sscanf(line.c_str(), "[worker %ld pid %ld] %n", &a.slot, &a.pid, &used) == 2 && used > 0)
      a.text = line.substr(static_cast<std::size_t>(used));
    else
      a.text = line;  // counted as a bad line by check_lines
    out.push_back(std::move(a));
  }
  return out;
}

/// Sends this process's stderr to a file until destroyed (a pool built
/// meanwhile gives its supervisor that stderr).
class stderr_to_file {
 public:
  explicit stderr_to_file(std::string path) : path_(std::move(path)) {
    std::fflush(stderr);
    saved_ = ::dup(2);
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ::dup2(fd, 2);
    ::close(fd);
  }
  ~stderr_to_file() {
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
  }
  stderr_to_file(const stderr_to_file&) = delete;
  stderr_to_file& operator=(const stderr_to_file&) = delete;

 private:
  std::string path_;
  int saved_ = -1;
};

}  // namespace output_lines

}  // namespace coshard_test
