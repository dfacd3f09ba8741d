# Findasio.cmake -- locate standalone (non-Boost) Asio, which is header only
# and ships no CMake package on Debian (libasio-dev).
#
# Result variables:
#   asio_FOUND, asio_INCLUDE_DIRS, asio_VERSION
# Cache variables:
#   asio_INCLUDE_DIR
# Imported target:
#   asio::asio   (INTERFACE; defines ASIO_STANDALONE and ASIO_NO_DEPRECATED)
#
# Hints: asio_ROOT / ASIO_ROOT (CMake's <PackageName>_ROOT), CMAKE_PREFIX_PATH.

find_path(asio_INCLUDE_DIR
  NAMES asio.hpp
  PATH_SUFFIXES include
  DOC "Directory containing standalone Asio's asio.hpp")
mark_as_advanced(asio_INCLUDE_DIR)

if(asio_INCLUDE_DIR AND EXISTS "${asio_INCLUDE_DIR}/asio/version.hpp")
  # #define ASIO_VERSION 102201 // 1.22.1   (XXYYZZ: major, minor, patch)
  file(STRINGS "${asio_INCLUDE_DIR}/asio/version.hpp" _asio_version_line
       REGEX "^#define[ \t]+ASIO_VERSION[ \t]+[0-9]+")
  if(_asio_version_line MATCHES "ASIO_VERSION[ \t]+([0-9]+)")
    math(EXPR _asio_major "${CMAKE_MATCH_1} / 100000")
    math(EXPR _asio_minor "${CMAKE_MATCH_1} / 100 % 1000")
    math(EXPR _asio_patch "${CMAKE_MATCH_1} % 100")
    set(asio_VERSION "${_asio_major}.${_asio_minor}.${_asio_patch}")
  endif()
  unset(_asio_version_line)
  unset(_asio_major)
  unset(_asio_minor)
  unset(_asio_patch)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(asio
  REQUIRED_VARS asio_INCLUDE_DIR
  VERSION_VAR asio_VERSION)

if(asio_FOUND)
  set(asio_INCLUDE_DIRS "${asio_INCLUDE_DIR}")
  if(NOT TARGET asio::asio)
    add_library(asio::asio INTERFACE IMPORTED)
    set_target_properties(asio::asio PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${asio_INCLUDE_DIR}"
      INTERFACE_COMPILE_DEFINITIONS "ASIO_STANDALONE;ASIO_NO_DEPRECATED")
  endif()
endif()
