// coshard/progress_bar.hpp - a ready-made terminal progress bar for
// job_options::progress.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "coshard/progress.hpp"

namespace coshard {

/// Options of a progress_bar, meant for designated initializers.
struct progress_bar_options {
  /// Printed first on every line, e.g. "crawl".
  std::string label{};
  /// Where to draw; a terminal gets one redrawn line, anything else plain lines.
  int fd = STDERR_FILENO;
  /// Nothing is drawn before the job has run this long, so a quick job stays
  /// silent (its final line too).
  std::chrono::milliseconds show_after{1000};
  /// On a non-terminal, a line at most this often (and the final one).
  std::chrono::milliseconds plain_interval{5000};
  /// Characters between the brackets of the bar.
  std::size_t width = 24;
  /// What the items are called: "pages", "files".
  std::string unit = "items";
};

/// Draws a job's progress: percent, a bar, items done of the total, items/s
/// and the time left (or, for an input of unknown size, the count, rate and
/// time so far), plus failed and retried items when there are any. On a
/// terminal the line is redrawn in place and ends with a newline when the job
/// does; elsewhere (a file, a pipe, a CI log) a plain line is written every
/// `plain_interval`, and at the end. Each line is one write().
///
/// Pass it as the job's callback: `pool.map(urls, fetch,
/// coshard::job_options{.progress = coshard::progress_bar("crawl")})`.
/// Copies share one bar (the job keeps a copy; yours can clear() the line
/// before printing something else), so give each running job its own bar;
/// one bar may draw several jobs one after another.
/// Write errors are ignored. Not thread-safe: call clear() where the job
/// runs (e.g. in a for_each_result sink).
class progress_bar {
 public:
  /// A bar with `options`.
  explicit progress_bar(progress_bar_options options = {})
      : state_(std::make_shared<state>(state{std::move(options), {}, false, {}, false})) {}
  /// A bar on stderr with `label` and the default options. (Not a
  /// std::string: a braced options list with two members could convert to one.)
  explicit progress_bar(const char* label) : progress_bar(progress_bar_options{.label = label}) {}

  /// Draws `p` (job_options::progress calls this).
  void operator()(const job_progress& p) {
    state& st = *state_;
    if (p.elapsed < st.last_draw || st.finished)
      st = state{std::move(st.options), st.terminal, false, {}, false};  // a new job
    const bool terminal = is_terminal();
    if (!st.drawn && p.elapsed < st.options.show_after) return;  // a quick job, or not yet
    if (!terminal && !p.finished && st.drawn && p.elapsed - st.last_draw < st.options.plain_interval) return;
    std::string out;
    if (terminal) out += '\r';
    out += format(p, st.options);
    if (terminal) out += "\x1b[K";  // erase what a longer previous line left
    if (!terminal || p.finished) out += '\n';
    write_all(out);
    st.drawn = true;
    st.last_draw = p.elapsed;
    st.finished = p.finished;
  }

  /// On a terminal, erases the bar's line so that the next output starts on
  /// a clean line; the next report draws the bar again below it. Does
  /// nothing elsewhere (plain lines end with a newline already).
  void clear() {
    if (state_->drawn && is_terminal()) write_all("\r\x1b[K");
  }

  /// The text of one line for `p`, without control characters or newline:
  /// "LABEL  42% [#####-------]  1,234/2,900 items  117.3 items/s  ETA 0:14".
  [[nodiscard]] static std::string format(const job_progress& p, const progress_bar_options& o) {
    const std::size_t finished = p.items_done + p.items_failed;
    const double seconds = std::chrono::duration<double>(p.elapsed).count();
    const double rate = seconds > 0 ? static_cast<double>(finished) / seconds : 0.0;
    std::string line = o.label;
    if (!line.empty()) line += "  ";
    if (p.items_total) {
      const std::size_t total = *p.items_total;
      const double fraction = total ? std::min(1.0, static_cast<double>(finished) / static_cast<double>(total)) : 1.0;
      const auto percent = static_cast<int>(fraction * 100.0);
      line += (percent < 10 ? "  " : percent < 100 ? " " : "") + std::to_string(percent) + "% [";
      const auto filled = static_cast<std::size_t>(fraction * static_cast<double>(o.width));
      line.append(filled, '#');
      line.append(o.width - filled, '-');
      line += "]  " + grouped(finished) + "/" + grouped(total) + " " + o.unit;
      line += "  " + decimal(rate) + " " + o.unit + "/s";
      if (p.finished)
        line += "  in " + clock(seconds);
      else if (rate > 0)
        line += "  ETA " + clock(static_cast<double>(total > finished ? total - finished : 0) / rate);
    } else {
      line += grouped(finished) + " " + o.unit + "  " + decimal(rate) + " " + o.unit + "/s  " + clock(seconds);
      if (p.finished) line += " in all";
    }
    if (p.items_failed) line += "  " + grouped(p.items_failed) + " failed";
    if (p.items_retried) line += "  " + grouped(p.items_retried) + " retried";
    return line;
  }

 private:
  // 1234567 -> "1,234,567"
  static std::string grouped(std::size_t n) {
    std::string digits = std::to_string(n), out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
      if (i && (digits.size() - i) % 3 == 0) out += ',';
      out += digits[i];
    }
    return out;
  }
  static std::string decimal(double v) {
    if (v >= 100) return grouped(static_cast<std::size_t>(v + 0.5));
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", v);
    return buf;
  }
  // 75 -> "1:15"; 3725 -> "1:02:05"
  static std::string clock(double seconds) {
    const auto s = static_cast<long long>(seconds + 0.5);
    char buf[48];
    if (s >= 3600)
      std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
    else
      std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
    return buf;
  }
  bool is_terminal() {
    if (!state_->terminal) state_->terminal = ::isatty(state_->options.fd) == 1;
    return *state_->terminal;
  }
  void write_all(std::string_view text) const noexcept {
    while (!text.empty()) {
      const ssize_t n = ::write(state_->options.fd, text.data(), text.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      text.remove_prefix(static_cast<std::size_t>(n));
    }
  }

  struct state {
    progress_bar_options options;
    std::optional<bool> terminal;
    bool drawn = false;
    std::chrono::nanoseconds last_draw{};
    bool finished = false;  // the last job drawn has ended: the next call starts another
  };
  std::shared_ptr<state> state_;
};

}  // namespace coshard
