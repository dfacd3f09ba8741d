# Builds SOURCE with CXX (coshard's include dir, C++20) and runs the result.
execute_process(
  COMMAND "${CXX}" -std=c++20 -O1 -DASIO_STANDALONE -I${INCLUDE_DIR} "${SOURCE}" -o "${OUTPUT}" -pthread
  RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${CXX} could not build ${SOURCE}:\n${err}")
endif()
execute_process(COMMAND "${OUTPUT}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${OUTPUT} failed (${rc}):\n${out}${err}")
endif()
message(STATUS "${out}")
