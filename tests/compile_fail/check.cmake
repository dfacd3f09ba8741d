# Compiles SOURCE (-fsyntax-only) and passes only if compilation fails with a
# diagnostic matching the `// expect: <regex>` line at the top of SOURCE.
file(STRINGS "${SOURCE}" expect_line LIMIT_COUNT 1 REGEX "^// expect: ")
string(REGEX REPLACE "^// expect: " "" expected "${expect_line}")
if(expected STREQUAL "")
  message(FATAL_ERROR "${SOURCE} has no `// expect:` line")
endif()
separate_arguments(extra NATIVE_COMMAND "${FLAGS}")
execute_process(
  COMMAND "${CXX}" -std=c++20 -fsyntax-only -I${INCLUDE_DIR} ${extra} "${SOURCE}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it must be rejected")
endif()
string(REPLACE "\n" " " flat "${out}${err}")
if(NOT flat MATCHES "${expected}")
  message(FATAL_ERROR "${SOURCE} was rejected without the expected message '${expected}':\n${err}")
endif()
message(STATUS "rejected as expected: ${expected}")
