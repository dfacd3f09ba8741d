// coshard/detail/supervisor/exec_supervisor.hpp - start_method::exec: the supervisor is
// the program's own binary run again, handed only its control socket, the
// workers' status pages and its settings, and told so by its arguments.
//
// Why: forking a process that runs threads copies only the forking thread,
// with every lock the others held; libraries such as OpenMP's runtime or CUDA
// do not work in such a child. posix_spawn does not copy the caller (glibc
// uses a vfork-like clone), and the fresh image is single-threaded until its
// main runs, which calls serve_if_worker first.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "coshard/detail/worker/worker_main.hpp"
#include "coshard/detail/separate_compilation.hpp"
#include "coshard/detail/parent/supervisor_link.hpp"
#include "coshard/pool_options.hpp"
#include "coshard/shippable_function.hpp"

extern char** environ;

namespace coshard::detail {

/// argv[1] of a re-executed supervisor; argv[2] is the owner's pid, argv[3]
/// the protocol version.
inline constexpr const char* exec_supervisor_flag = "--coshard-supervisor";
inline constexpr const char* exec_protocol_version = "2";
/// Set (to the owner's pid) only in the environment of a re-executed
/// supervisor, and removed by serve_if_worker: a program that runs without
/// serving (main did not call it) must not start pools of its own, which
/// would re-execute it again.
inline constexpr const char* exec_supervisor_env = "COSHARD_SUPERVISOR_OF";
// The descriptors the re-executed supervisor finds its inputs on.
inline constexpr int exec_control_fd = 3;
inline constexpr int exec_pages_fd = 4;
inline constexpr int exec_config_fd = 5;

/// What the owner's pool_options mean to the supervisor and its workers,
/// followed on the wire by the initializers' bytes.
struct exec_settings {
  std::uint64_t slots = 0;
  std::uint64_t concurrency = 0;
  std::uint64_t max_frame_bytes = 0;
  std::int64_t timeout_grace_ns = 0;
  std::uint64_t report_rss = 0;
  std::uint64_t initializer_id = 0;
  std::uint64_t initializer_size = 0;
  std::uint64_t async_initializer_id = 0;
  std::uint64_t async_initializer_size = 0;
  std::uint64_t output_route = 0;
};

inline std::string encode_exec_config(const pool_options& o, std::size_t slots) {
  const std::string init = shippable_access::bytes(o.initializer);
  const std::string async_init = shippable_access::bytes(o.async_initializer);
  exec_settings h;
  h.slots = slots;
  h.concurrency = o.concurrency;
  h.max_frame_bytes = o.max_frame_bytes;
  h.timeout_grace_ns = std::chrono::nanoseconds(o.timeout_grace).count();
  h.report_rss = o.max_worker_rss_bytes > 0;
  h.initializer_id = o.initializer ? shippable_access::id(o.initializer) : 0;
  h.initializer_size = init.size();
  h.async_initializer_id = o.async_initializer ? shippable_access::id(o.async_initializer) : 0;
  h.async_initializer_size = async_init.size();
  h.output_route = static_cast<std::uint64_t>(output_route_of(o));
  std::string out(reinterpret_cast<const char*>(&h), sizeof h);
  return out + init + async_init;
}

// An anonymous file holding `bytes`, read back from offset 0.
inline int bytes_in_memfd(const std::string& bytes) {
  const int fd = ::memfd_create("coshard-exec-config", MFD_CLOEXEC);
  if (fd < 0) throw pool_error(std::string("coshard: memfd_create failed: ") + std::strerror(errno));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      throw pool_error(std::string("coshard: writing the supervisor's settings failed: ") + std::strerror(errno));
    }
    done += static_cast<std::size_t>(n);
  }
  return fd;
}

/// The exec launch: /proc/self/exe is run again with the flag, its control
/// socket, the status pages and the settings on descriptors 3, 4 and 5 and
/// nothing else open above stderr, default signal handling, an empty signal
/// mask and a process group of its own.
inline supervisor_launch exec_supervisor(const pool_options& o, std::size_t slots, int pages_fd) {
  return {[&o, slots, pages_fd](int control) {
            // Everything that allocates comes first, so that a throw leaves
            // no descriptor behind; the guard owns what follows.
            char exe[4096];
            const ssize_t len = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
            const std::string program = len > 0 ? std::string(exe, static_cast<std::size_t>(len)) : "coshard-sup";
            const std::string owner = std::to_string(::getpid());
            std::vector<std::string> args = {program, exec_supervisor_flag, owner, exec_protocol_version};
            std::vector<std::string> env;
            const std::string marker = std::string(exec_supervisor_env) + "=";
            for (char** e = environ; e && *e; ++e)
              if (std::strncmp(*e, marker.c_str(), marker.size()) != 0) env.emplace_back(*e);
            env.push_back(marker + owner);
            std::vector<char*> argv, envp;
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            for (auto& e : env) envp.push_back(e.data());
            envp.push_back(nullptr);
            const std::string config = encode_exec_config(o, slots);

            struct spawn_state {
              int config_fd = -1;
              int high[3] = {-1, -1, -1};
              posix_spawn_file_actions_t actions;
              posix_spawnattr_t attr;
              bool actions_made = false, attr_made = false;
              ~spawn_state() {
                for (int fd : high)
                  if (fd >= 0) ::close(fd);
                if (config_fd >= 0) ::close(config_fd);
                if (actions_made) ::posix_spawn_file_actions_destroy(&actions);
                if (attr_made) ::posix_spawnattr_destroy(&attr);
              }
            } st;
            auto check = [](int rc, const char* what) {
              if (rc != 0) throw pool_error(std::string("coshard: ") + what + " failed: " + std::strerror(rc));
            };
            st.config_fd = bytes_in_memfd(config);
            // Moved above the target numbers first, so no dup2 overwrites a source.
            const int sources[3] = {control, pages_fd, st.config_fd};
            for (int i = 0; i < 3; ++i)
              if ((st.high[i] = ::fcntl(sources[i], F_DUPFD_CLOEXEC, 10)) < 0) check(errno, "fcntl(F_DUPFD)");
            check(::posix_spawn_file_actions_init(&st.actions), "posix_spawn_file_actions_init");
            st.actions_made = true;
            check(::posix_spawnattr_init(&st.attr), "posix_spawnattr_init");
            st.attr_made = true;
            for (int i = 0; i < 3; ++i)
              check(::posix_spawn_file_actions_adddup2(&st.actions, st.high[i], exec_control_fd + i),
                    "posix_spawn_file_actions_adddup2");
            check(::posix_spawn_file_actions_addclosefrom_np(&st.actions, exec_config_fd + 1),
                  "posix_spawn_file_actions_addclosefrom_np");
            sigset_t none, all;
            sigemptyset(&none);
            sigfillset(&all);
            sigdelset(&all, SIGKILL);
            sigdelset(&all, SIGSTOP);
            check(::posix_spawnattr_setsigmask(&st.attr, &none), "posix_spawnattr_setsigmask");
            check(::posix_spawnattr_setsigdefault(&st.attr, &all), "posix_spawnattr_setsigdefault");
            check(::posix_spawnattr_setpgroup(&st.attr, 0), "posix_spawnattr_setpgroup");
            check(::posix_spawnattr_setflags(&st.attr,
                                             POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP),
                  "posix_spawnattr_setflags");

            flush_standard_streams();
            pid_t pid = -1;
            // /proc/self/exe is resolved in the child, which still runs our
            // image: the same binary even if its file was replaced since.
            const int rc = ::posix_spawn(&pid, "/proc/self/exe", &st.actions, &st.attr, argv.data(), envp.data());
            if (rc != 0)
              throw pool_error("coshard: start_method::exec could not run /proc/self/exe (" + program +
                               "): " + std::strerror(rc));
            return pid;
          },
          "; with start_method::exec the program is run again as the supervisor, and its main must call "
          "coshard::serve_if_worker(argc, argv) before anything else"};
}

/// Threads of this process (1 if it cannot tell).
inline int thread_count() noexcept {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n > 0 ? n : 1;
}

/// The inputs of a re-executed supervisor, read from its descriptors.
struct exec_inputs {
  worker_settings base;
  std::size_t slots = 0;
  worker_status* pages = nullptr;
  coshard::shippable_function<void()> initializer;
  coshard::shippable_function<asio::awaitable<void>()> async_initializer;
  output_route output = output_route::inherit;
};

inline exec_inputs read_exec_inputs() {
  struct stat st {};
  if (::fstat(exec_config_fd, &st) != 0) throw pool_error("coshard: the settings descriptor is missing");
  std::string config(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t done = 0;
  while (done < config.size()) {
    const ssize_t n = ::pread(exec_config_fd, config.data() + done, config.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw pool_error("coshard: reading the supervisor's settings failed");
    done += static_cast<std::size_t>(n);
  }
  ::close(exec_config_fd);
  if (config.size() < sizeof(exec_settings)) throw pool_error("coshard: the supervisor's settings are truncated");
  const auto h = load_trivial<exec_settings>(reinterpret_cast<const std::byte*>(config.data()));
  if (config.size() != sizeof h + h.initializer_size + h.async_initializer_size)
    throw pool_error("coshard: the supervisor's settings have the wrong size");
  // 0 slots: a cluster's root that forks no worker of its own.
  if (h.slots > 4096) throw pool_error("coshard: the supervisor's settings name no valid slot count");
  if (h.output_route > static_cast<std::uint64_t>(output_route::owner))
    throw pool_error("coshard: the supervisor's settings name no valid output route");

  exec_inputs in;
  in.slots = static_cast<std::size_t>(h.slots);
  const std::size_t page_bytes = std::max<std::size_t>(1, in.slots) * sizeof(worker_status);  // as the owner maps them
  if (::fstat(exec_pages_fd, &st) != 0 || static_cast<std::size_t>(st.st_size) < page_bytes)
    throw pool_error("coshard: the status pages are missing or too small");
  void* p = ::mmap(nullptr, page_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, exec_pages_fd, 0);
  if (p == MAP_FAILED) throw pool_error("coshard: mmap of the status pages failed");
  ::close(exec_pages_fd);
  in.pages = static_cast<worker_status*>(p);

  const std::size_t init_at = sizeof h;
  const std::size_t async_at = init_at + h.initializer_size;
  if (h.initializer_id != 0)
    in.initializer = shippable_access::rebuild<void>(h.initializer_id, config.substr(init_at, h.initializer_size));
  if (h.async_initializer_id != 0)
    in.async_initializer = shippable_access::rebuild<asio::awaitable<void>>(
        h.async_initializer_id, config.substr(async_at, h.async_initializer_size));
  in.output = static_cast<output_route>(h.output_route);
  in.base.concurrency = static_cast<std::size_t>(h.concurrency);
  in.base.max_frame_bytes = h.max_frame_bytes;
  in.base.timeout_grace = std::chrono::nanoseconds(h.timeout_grace_ns);
  in.base.report_rss = h.report_rss != 0;
  in.base.leak_check_at_exit = true;  // a fresh image: every root is in the worker, unless...
  if (const int threads = thread_count(); threads > 1) {
    // ...static initialisers of the program started threads before main
    // reached serve_if_worker: the workers are then forked from a threaded
    // process after all, and their leak check would see only one stack.
    std::fprintf(stderr,
                 "coshard supervisor %d: the program runs %d threads before serve_if_worker (started by static "
                 "initialisers); workers forked from it get only the forking thread\n",
                 static_cast<int>(::getpid()), threads);
    in.base.leak_check_at_exit = false;
  }
  return in;
}

/// The re-executed program as a supervisor: never returns.
[[noreturn]] COSHARD_DECL void serve_exec_supervisor(int argc, char** argv) noexcept;

#if COSHARD_DEFINE_MACHINERY
[[noreturn]] COSHARD_DECL void serve_exec_supervisor(int argc, char** argv) noexcept {
  const char* env = std::getenv(exec_supervisor_env);
  if (argc != 4 || !env || std::strcmp(env, argv[2]) != 0 || std::strcmp(argv[3], exec_protocol_version) != 0) {
    std::fprintf(stderr, "coshard: %s is passed only by a pool to its own re-executed program (protocol %s)\n",
                 exec_supervisor_flag, exec_protocol_version);
    ::_exit(supervisor_usage_exit_code);
  }
  ::unsetenv(exec_supervisor_env);  // the workers it forks and their children are ordinary programs
  const pid_t owner = static_cast<pid_t>(std::strtol(argv[2], nullptr, 10));
  try {
    // Lives until _exit: the supervisor and every worker it forks point into it.
    static exec_inputs in = read_exec_inputs();
    in.base.initializer = &in.initializer;
    in.base.async_initializer = &in.async_initializer;
    static const worker_settings_factory settings = [](std::uint32_t slot) {
      worker_settings s = in.base;
      s.status = slot < in.slots ? in.pages + slot : nullptr;
      return s;
    };
    supervisor_process(exec_control_fd, owner, settings, in.output).run();
  } catch (const std::exception& e) {
    send_message(exec_control_fd, {supervisor_op::start_failed, 0, 0, ::getpid(), 0});
    send_text(exec_control_fd, e.what());
  } catch (...) {
    send_message(exec_control_fd, {supervisor_op::start_failed, 0, 0, ::getpid(), 0});
    send_text(exec_control_fd, "a non-standard exception");
  }
  ::_exit(supervisor_failed_exit_code);
}
#endif

}  // namespace coshard::detail
