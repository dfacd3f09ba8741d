#!/usr/bin/env bash
# Compile time of a coshard program, as every user pays it: g++ -O2, one
# translation unit, no precompiled headers. Three programs, compiled in turn
# (A B C A B C ...) so that machine noise hits all of them alike:
#   asio_only   a bare Asio coroutine program (the floor coshard builds on)
#   one_map     a program with a single pool.map call
#   quickstart  examples/quickstart/main.cpp beside the include directory
# and, with COSHARD_SEPARATE_COMPILATION (CMake target coshard::separate),
# the same two programs' own files plus the one file that compiles coshard's
# machinery for the whole program (coshard_src, once per program, unchanged
# when the program's own files change):
#   one_map+sep, quickstart+sep, coshard_src
# Prints the median wall and user+sys seconds of each.
#
# usage: scripts/measure-compile-time.sh [runs=5] [include-dir=include] [compiler=g++]
set -euo pipefail
runs=${1:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
inc=$(cd "${2:-$root/include}" && pwd)
cxx=${3:-g++}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat >"$work/asio_only.cpp" <<'CPP'
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <cstdio>
#include <vector>
int main() {
  asio::io_context io;
  std::vector<long> out;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(1));
    co_await t.async_wait(asio::use_awaitable);
    for (long x = 0; x < 10; ++x) out.push_back(x * x);
  }, asio::detached);
  io.run();
  std::printf("%zu\n", out.size());
}
CPP
cat >"$work/one_map.cpp" <<'CPP'
#include <coshard/coshard.hpp>
#include <cstdio>
#include <numeric>
#include <vector>
int main() {
  coshard::process_pool pool{{.workers = 2}};
  std::vector<int> numbers(1000);
  std::iota(numbers.begin(), numbers.end(), 1);
  std::vector<long> squares = pool.map(numbers, [](int x) { return long(x) * x; });
  std::printf("%ld\n", squares.back());
}
CPP
cp "$inc/../examples/quickstart/main.cpp" "$work/quickstart.cpp"

echo '#include <coshard/impl/src.hpp>' >"$work/coshard_src.cpp"
have_separate=0
[ -f "$inc/coshard/impl/src.hpp" ] && have_separate=1

programs=(asio_only one_map quickstart)
((have_separate)) && programs+=(one_map+sep quickstart+sep coshard_src)
for ((r = 0; r < runs; ++r)); do
  for p in "${programs[@]}"; do
    src=${p%+sep}
    flags=()
    [[ $p == *+sep || $p == coshard_src ]] && flags=(-DCOSHARD_SEPARATE_COMPILATION)
    /usr/bin/time -f "%e %U %S" -o "$work/$p.$r.time" \
      "$cxx" -std=c++20 -O2 "${flags[@]}" -I"$inc" -c "$work/$src.cpp" -o "$work/$p.o"
  done
done
for p in "${programs[@]}"; do
  cat "$work/$p".*.time | /usr/bin/python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
wall = statistics.median(r[0] for r in rows)
cpu = statistics.median(r[1] + r[2] for r in rows)
print(f"{sys.argv[1]:<15} wall {wall:6.2f} s   user+sys {cpu:6.2f} s   ({len(rows)} runs)")
' "$p"
done
