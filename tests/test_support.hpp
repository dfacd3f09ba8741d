// tests/test_support.hpp - what every pool test checks at its end: no child
// process left, no file descriptor leaked.
#pragma once

#include <catch2/catch.hpp>
#include <coshard/process_pool.hpp>
#include <dirent.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <new>
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

}  // namespace coshard_test
