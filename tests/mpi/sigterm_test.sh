#!/usr/bin/env bash
# Ctrl-C or SIGTERM to mpirun while the cluster runs a job: no process of
# the run may be left behind on any rank (ranks, their supervisors, workers).
# SIGNAL ROOTKILL instead SIGKILLs the root rank alone, under mpirun
# --enable-recovery (which then keeps the other ranks running): they must
# notice the root's silence and end, with their workers.
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

recovery=()
if [[ $signal == ROOTKILL ]]; then recovery=(--enable-recovery); fi
env "$marker" "$mpiexec" --oversubscribe "${recovery[@]}" -np 3 "$binary" "[.long_job]" > /dev/null 2>&1 &
mpirun_pid=$!
# Wait until the job runs: ranks, supervisors and workers (3 each) and mpirun.
for _ in $(seq 100); do
  (( $(with_marker) >= 10 )) && break
  sleep 0.1
done
started=$(with_marker)
echo "processes of the run before SIG$signal: $started"
if (( started < 10 )); then echo "FAIL: the run did not start"; kill -KILL $mpirun_pid; exit 1; fi
if [[ $signal == ROOTKILL ]]; then
  root=""
  for env in /proc/[0-9]*/environ; do
    if { tr '\0' '\n' < "$env"; } 2>/dev/null | grep -qx "$marker" &&
       { tr '\0' '\n' < "$env"; } 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=0"; then
      pid=${env#/proc/}; pid=${pid%/environ}
      # The rank itself, not its supervisor or workers (their parent is a marked process too).
      if [[ $(ps -o comm= -p "$pid") != coshard-sup ]] && ! { tr '\0' '\n' < "/proc/$(ps -o ppid= -p "$pid" | tr -d ' ')/environ"; } 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=0"; then root=$pid; fi
    fi
  done
  if [[ -z $root ]]; then echo "FAIL: no root rank found"; kill -KILL $mpirun_pid; exit 1; fi
  echo "SIGKILL to the root rank, pid $root"
  kill -KILL "$root"
  # The ranks give up after rank_timeout (3 s) without the root's heartbeat.
  for _ in $(seq 150); do
    (( $(with_marker) == 0 )) && break
    sleep 0.1
  done
  kill -TERM $mpirun_pid 2>/dev/null
fi
if [[ $signal != ROOTKILL ]]; then kill -"$signal" $mpirun_pid; fi
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
