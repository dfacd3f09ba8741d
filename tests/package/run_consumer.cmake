# Drives a package test: builds and runs tests/package/consumer against coshard.
#
#   cmake -DMODE=install|subdirectory|fetchcontent|pkgconfig -DCOSHARD_SOURCE_DIR=... -DCOSHARD_BUILD_DIR=...
#         -DCONSUMER_SOURCE_DIR=... -DSCRATCH_DIR=... -DCXX_COMPILER=...
#         [-DCXX_FLAGS=...] [-DGENERATOR=...] [-DMAKE_PROGRAM=...]
#         [-DBUILD_TYPE=...] [-DCONFIG=...] -P run_consumer.cmake
#
# MODE=install:      cmake --install <COSHARD_BUILD_DIR> --prefix <SCRATCH_DIR>/prefix,
#                    then configure the consumer with CMAKE_PREFIX_PATH=<prefix>
#                    (find_package(coshard)).
# MODE=subdirectory: configure the consumer with COSHARD_SOURCE_DIR=<source>
#                    (add_subdirectory(coshard)).
# MODE=fetchcontent: the same, the consumer using FetchContent from that path.
# MODE=pkgconfig:    install as for MODE=install, then build the consumer with
#                    make and `pkg-config coshard` alone (no CMake).
# Then build the consumer and run it; any failing step is a FATAL_ERROR that
# carries the step's output.
cmake_minimum_required(VERSION 3.25)

foreach(var IN ITEMS MODE COSHARD_SOURCE_DIR COSHARD_BUILD_DIR CONSUMER_SOURCE_DIR
                     SCRATCH_DIR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT MODE MATCHES "^(install|subdirectory|fetchcontent|pkgconfig)$")
  message(FATAL_ERROR "run_consumer.cmake: MODE must be install, subdirectory, fetchcontent or pkgconfig, got '${MODE}'")
endif()

set(prefix "${SCRATCH_DIR}/prefix")
set(build  "${SCRATCH_DIR}/build")

# run_step(<description> <command...>): run, fail with the output on error.
function(run_step what)
  list(JOIN ARGN " " cmdline)
  message(STATUS "[${MODE}] ${what}: ${cmdline}")
  execute_process(
    COMMAND ${ARGN}
    RESULT_VARIABLE rc
    OUTPUT_VARIABLE out
    ERROR_VARIABLE out
    TIMEOUT ${step_timeout})
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR
      "[${MODE}] ${what} failed (${rc}).\n"
      "Command: ${cmdline}\n"
      "Output:\n${out}")
  endif()
  message(STATUS "[${MODE}] ${what}: ok")
endfunction()

set(step_timeout 540)

# Fresh scratch tree every run.
file(REMOVE_RECURSE "${SCRATCH_DIR}")
file(MAKE_DIRECTORY "${SCRATCH_DIR}")

set(config_args)
set(build_args)
if(CONFIG)
  list(APPEND config_args --config "${CONFIG}")
  list(APPEND build_args  --config "${CONFIG}")
endif()

set(configure_args
  -S "${CONSUMER_SOURCE_DIR}"
  -B "${build}"
  "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
  "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}")
if(GENERATOR)
  list(APPEND configure_args -G "${GENERATOR}")
endif()
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(BUILD_TYPE)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
elseif(CONFIG)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${CONFIG}")
endif()

if(MODE STREQUAL "pkgconfig")
  run_step("install coshard into ${prefix}"
    "${CMAKE_COMMAND}" --install "${COSHARD_BUILD_DIR}" --prefix "${prefix}" ${config_args})
  if(NOT INSTALL_DATADIR)
    set(INSTALL_DATADIR share)
  endif()
  if(NOT PKG_CONFIG_EXECUTABLE OR NOT MAKE_EXECUTABLE)
    message(FATAL_ERROR "[pkgconfig] -DPKG_CONFIG_EXECUTABLE=... and -DMAKE_EXECUTABLE=... are required")
  endif()
  set(pc_env "${CMAKE_COMMAND}" -E env "PKG_CONFIG_PATH=${prefix}/${INSTALL_DATADIR}/pkgconfig")
  # The scratch install's coshard.pc, relocated to where it lies, must be the
  # one found.
  execute_process(COMMAND ${pc_env} "${PKG_CONFIG_EXECUTABLE}" --variable=includedir coshard
                  RESULT_VARIABLE rc OUTPUT_VARIABLE pc_include ERROR_VARIABLE pc_err
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[pkgconfig] pkg-config did not find coshard (${rc}): ${pc_err}")
  endif()
  file(REAL_PATH "${pc_include}" pc_include)
  file(REAL_PATH "${prefix}/include" want_include)
  if(NOT pc_include STREQUAL want_include)
    message(FATAL_ERROR "[pkgconfig] coshard.pc names includedir '${pc_include}', not '${want_include}'")
  endif()
  run_step("build consumer with make and pkg-config"
    ${pc_env} "${MAKE_EXECUTABLE}" -f "${CONSUMER_SOURCE_DIR}/Makefile" "OUT=${build}" "CXX=${CXX_COMPILER}"
    "PKG_CONFIG=${PKG_CONFIG_EXECUTABLE}"
    "CXXFLAGS=${CXX_FLAGS} -O1")
  set(step_timeout 120)
  run_step("run consumer" "${build}/bin/consumer${CMAKE_EXECUTABLE_SUFFIX}")
  return()
endif()

if(MODE STREQUAL "install")
  run_step("install coshard into ${prefix}"
    "${CMAKE_COMMAND}" --install "${COSHARD_BUILD_DIR}" --prefix "${prefix}" ${config_args})
  list(APPEND configure_args
    "-DCMAKE_PREFIX_PATH=${prefix}"
    # Only the scratch install may satisfy find_package(coshard).
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
else()
  list(APPEND configure_args "-DCOSHARD_SOURCE_DIR=${COSHARD_SOURCE_DIR}")
endif()

run_step("configure consumer" "${CMAKE_COMMAND}" ${configure_args})

# Check that the intended consumption mode was really used.
file(STRINGS "${build}/CMakeCache.txt" coshard_dir_line REGEX "^coshard_DIR:")
if(MODE STREQUAL "install")
  string(REGEX REPLACE "^coshard_DIR:[A-Z]+=" "" coshard_dir "${coshard_dir_line}")
  file(REAL_PATH "${prefix}" real_prefix)
  if(EXISTS "${coshard_dir}")
    file(REAL_PATH "${coshard_dir}" coshard_dir)
  endif()
  string(FIND "${coshard_dir}" "${real_prefix}/" pos)
  if(NOT pos EQUAL 0)
    message(FATAL_ERROR
      "[install] find_package(coshard) used '${coshard_dir}', not the scratch install in '${real_prefix}'")
  endif()
else()
  # Not top level: coshard must not have added its own tests/examples/benchmarks.
  if(MODE STREQUAL "fetchcontent")
    set(coshard_build "${build}/_deps/coshard-build")
  else()
    set(coshard_build "${build}/coshard-build")
  endif()
  if(NOT EXISTS "${coshard_build}")
    message(FATAL_ERROR "[${MODE}] coshard was not configured in ${coshard_build}")
  endif()
  foreach(sub IN ITEMS tests examples benchmarks)
    if(EXISTS "${coshard_build}/${sub}")
      message(FATAL_ERROR
        "[${MODE}] coshard configured its ${sub} although it is not the top-level project")
    endif()
  endforeach()
endif()

run_step("build consumer" "${CMAKE_COMMAND}" --build "${build}" -j2 ${build_args})

set(step_timeout 120)
# consumer: header-only; consumer_separate, in projects that build it:
# coshard::separate.
set(programs consumer)
file(STRINGS "${CONSUMER_SOURCE_DIR}/CMakeLists.txt" builds_separate REGEX "add_executable\\(consumer_separate")
if(builds_separate)
  list(APPEND programs consumer_separate)
endif()
foreach(name IN LISTS programs)
  set(exe "${build}/bin/${name}${CMAKE_EXECUTABLE_SUFFIX}")
  if(NOT EXISTS "${exe}")
    message(FATAL_ERROR "[${MODE}] ${name} binary not found at ${exe}")
  endif()
  run_step("run ${name}" "${exe}")
endforeach()
