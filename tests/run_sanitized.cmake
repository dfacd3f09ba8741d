# Runs a test under the sanitizers with every report of every process it
# starts (the test, pool supervisors, workers) written to its own file under
# LOG_DIR, and fails if any report exists. A worker's memory error would
# otherwise only end that worker: the pool retries its batch, the answer is
# right and the test would pass.
#
#   cmake -DCOMMAND=<exe> [-DARGS=<arg;...>] -DLOG_DIR=<dir>
#         [-DEXPECT_REPORT=<regex>] -P run_sanitized.cmake
#
# EXPECT_REPORT (the canary): pass only if the command itself succeeds (the
# pool hid the fault, so the report came from another of its processes) and
# a report matching the regex was written anyway.
cmake_minimum_required(VERSION 3.25)
foreach(var COMMAND LOG_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_sanitized.cmake: ${var} is not set")
  endif()
endforeach()

file(REMOVE_RECURSE "${LOG_DIR}")
file(MAKE_DIRECTORY "${LOG_DIR}")
set(ENV{ASAN_OPTIONS} "$ENV{ASAN_OPTIONS}:log_path=${LOG_DIR}/asan")
set(ENV{UBSAN_OPTIONS} "$ENV{UBSAN_OPTIONS}:log_path=${LOG_DIR}/ubsan")
# g++'s UBSan runtime, linked beside ASan's, ignores log_path: its reports
# go to the stderr of whichever process hit them, so the output is scanned too.
execute_process(COMMAND "${COMMAND}" ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
message("${out}")

# A log holds a report if it says ERROR or "runtime error"; LeakSanitizer's
# "Running thread N was not suspended" warning alone (a process forked from a
# threaded test that exits normally) is not one.
file(GLOB logs "${LOG_DIR}/*")
set(reports "")
set(all "")
foreach(log IN LISTS logs)
  file(READ "${log}" text)
  if(text MATCHES "ERROR: |runtime error: ")
    list(APPEND reports "${log}")
    string(APPEND all "==== ${log}\n${text}\n")
  endif()
endforeach()
string(REGEX MATCHALL "[^\n]*(runtime error: |ERROR: AddressSanitizer|ERROR: LeakSanitizer)[^\n]*" in_output "${out}")
if(in_output)
  list(JOIN in_output "\n" in_output)
  string(APPEND all "==== reports in the output\n${in_output}\n")
  list(APPEND reports output)
endif()

if(DEFINED EXPECT_REPORT)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "the canary itself failed (${rc}): the pool should have hidden the planted fault\n${all}")
  endif()
  if(NOT all MATCHES "${EXPECT_REPORT}")
    message(FATAL_ERROR "no report matching '${EXPECT_REPORT}' under ${LOG_DIR}: a worker's sanitizer "
                        "report would go unnoticed\n${all}")
  endif()
  message(STATUS "the planted fault was reported, as it must be:\n${all}")
  return()
endif()

if(reports)
  message(FATAL_ERROR "sanitizer reports from the test's processes:\n${all}")
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${COMMAND} failed: ${rc}")
endif()
