#!/usr/bin/env bash
# Ctrl-C or SIGTERM to mpirun while the cluster runs a job: no process of
# the run may be left behind on any rank (ranks, their supervisors, workers).
#   sigterm_test.sh MPIEXEC TEST_BINARY SIGNAL
# Every process of the run carries a marker in its environment (inherited by
# the supervisors and workers the ranks fork), so that other tests running
# at the same time are not counted.
set -u
mpiexec=$1 binary=$2 signal=$3
marker="COSHARD_SIGNAL_TEST=$$-$RANDOM"

with_marker() {
  local n=0
  for env in /proc/[0-9]*/environ; do
    if { tr '\0' '\n' < "$env"; } 2>/dev/null | grep -qx "$marker"; then n=$((n + 1)); fi
  done
  echo "$n"
}

env "$marker" "$mpiexec" --oversubscribe -np 3 "$binary" "[.long_job]" > /dev/null 2>&1 &
mpirun_pid=$!
# Wait until the job runs: ranks, supervisors and workers (3 each) and mpirun.
for _ in $(seq 100); do
  (( $(with_marker) >= 10 )) && break
  sleep 0.1
done
started=$(with_marker)
echo "processes of the run before SIG$signal: $started"
if (( started < 10 )); then echo "FAIL: the run did not start"; kill -KILL $mpirun_pid; exit 1; fi
kill -"$signal" $mpirun_pid
wait $mpirun_pid
# mpirun forwards the signal, then kills what is left; give the supervisors
# a moment to see their owners go.
for _ in $(seq 50); do
  (( $(with_marker) == 0 )) && break
  sleep 0.1
done
left=$(with_marker)
echo "processes of the run left after SIG$signal: $left"
if (( left != 0 )); then
  for env in /proc/[0-9]*/environ; do
    if { tr '\0' '\n' < "$env"; } 2>/dev/null | grep -qx "$marker"; then
      pid=${env#/proc/}; pid=${pid%/environ}; echo "  left: $pid $(tr '\0' ' ' < /proc/$pid/cmdline)"
      kill -KILL "$pid"
    fi
  done
  echo "FAIL"
  exit 1
fi
echo "PASS"
