// coshard/bench/process_stats.hpp - memory figures of the calling process and
// small helpers for benchmark configuration from the environment.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>

namespace coshard::bench {

/// Peak resident set size of this process (VmHWM) in bytes; -1 if
/// /proc/self/status cannot be read.
inline double peak_rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  double kb = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmHWM: %lf kB", &kb) == 1) break;
  std::fclose(f);
  return kb < 0 ? -1 : kb * 1024;
}

/// Resident set size of this process now, in bytes; -1 if unknown.
inline double rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return -1;
  double pages = 0, resident = 0;
  const int got = std::fscanf(f, "%lf %lf", &pages, &resident);
  std::fclose(f);
  return got == 2 ? resident * static_cast<double>(::sysconf(_SC_PAGESIZE)) : -1;
}

/// Resets this process's peak RSS to its current RSS (Linux >= 4.0), so that
/// a following peak_rss_bytes() measures one phase. Returns false if the
/// kernel refused.
inline bool reset_peak_rss() {
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

/// The positive integer in environment variable `name`, or `fallback` when it
/// is unset, empty, zero, negative or not a number.
inline std::size_t env_size(const char* name, std::size_t fallback) {
  const char* s = std::getenv(name);
  if (!s || !*s || *s == '-') return fallback;  // strtoull would wrap "-1" around
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s, &end, 10);
  if (end == s || *end != '\0' || v == 0) return fallback;
  return static_cast<std::size_t>(v);
}

}  // namespace coshard::bench
