// coshard/detail/exit_codes.hpp - every exit code a process coshard starts
// ends with on purpose, in one place so that none is used twice and the
// parent reads them as the children meant them.
#pragma once

namespace coshard::detail {

/// A worker whose watchdog found a plain function stuck past item_timeout +
/// timeout_grace (the convention of timeout(1)); the parent then reads the
/// input index from the worker's status page.
inline constexpr int timeout_exit_code = 124;

/// A worker whose initializer failed (it said why in its ready frame first).
inline constexpr int init_failed_exit_code = 4;

/// A child whose leak check at a clean exit (sanitized builds) found leaks.
inline constexpr int leak_found_exit_code = 23;

/// A supervisor that could not start (it told the owner why first): EX_SOFTWARE.
inline constexpr int supervisor_failed_exit_code = 70;

/// A program given the supervisor's flag without being a pool's supervisor:
/// a usage error, as for any bad command line.
inline constexpr int supervisor_usage_exit_code = 2;

}  // namespace coshard::detail
