# Finds NCCL >= 2.28 with the device API (nccl_device.h) and defines the imported target monomoe::nccl.
# Looks in NCCL_ROOT (cache variable or environment) first, then the CUDA toolkit, then system paths.
# The library's folder goes into the RPATH of everything linked to it: before NCCL 2.31 the device API
# needs the same NCCL at compile time and run time, so the one found here is the one loaded.
if(TARGET monomoe::nccl)
  return()
endif()
# An NCCL_ROOT given by the user is searched alone (header and library must come from the same NCCL:
# a wheel's lib/ holds only libnccl.so.2, which a plain search would pass over for the system's
# libnccl.so). Without NCCL_ROOT: the CUDA toolkit, then system paths.
set(_nccl_root ${NCCL_ROOT})
if(NOT _nccl_root)
  set(_nccl_root $ENV{NCCL_ROOT})
endif()
if(_nccl_root)
  find_path(MONOMOE_NCCL_INCLUDE_DIR nccl_device.h
    PATHS ${_nccl_root} PATH_SUFFIXES include NO_DEFAULT_PATH NO_CACHE)
  find_library(MONOMOE_NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
    PATHS ${_nccl_root} PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH NO_CACHE)
else()
  set(_nccl_hints)
  if(DEFINED CUDAToolkit_LIBRARY_ROOT)
    list(APPEND _nccl_hints ${CUDAToolkit_LIBRARY_ROOT})
  endif()
  find_path(MONOMOE_NCCL_INCLUDE_DIR nccl_device.h
    HINTS ${_nccl_hints} ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include NO_CACHE)
  find_library(MONOMOE_NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
    HINTS ${_nccl_hints} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64 NO_CACHE)
endif()
if(NOT MONOMOE_NCCL_INCLUDE_DIR OR NOT MONOMOE_NCCL_LIBRARY)
  message(FATAL_ERROR
    "monomoe needs NCCL >= 2.28 with its device API (the header nccl_device.h and libnccl.so).\n"
    "  NCCL_ROOT: '${_nccl_root}'  found header folder: '${MONOMOE_NCCL_INCLUDE_DIR}'  library: '${MONOMOE_NCCL_LIBRARY}'\n"
    "Point CMake at an NCCL install with -DNCCL_ROOT=<prefix> (holding include/ and lib/), e.g. the\n"
    "PyTorch wheel's <venv>/lib/python3.12/site-packages/nvidia/nccl, or install the CUDA 13 toolkit.")
endif()
file(STRINGS "${MONOMOE_NCCL_INCLUDE_DIR}/nccl.h" _nccl_lines REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) ")
foreach(_l IN LISTS _nccl_lines)
  if(_l MATCHES "^#define NCCL_(MAJOR|MINOR|PATCH) +([0-9]+)")
    set(_nccl_${CMAKE_MATCH_1} ${CMAKE_MATCH_2})
  endif()
endforeach()
set(MONOMOE_NCCL_VERSION "${_nccl_MAJOR}.${_nccl_MINOR}.${_nccl_PATCH}")
if(MONOMOE_NCCL_VERSION VERSION_LESS 2.28)
  message(FATAL_ERROR "monomoe needs NCCL >= 2.28 (device API); found ${MONOMOE_NCCL_VERSION} in "
    "${MONOMOE_NCCL_INCLUDE_DIR}. Point -DNCCL_ROOT=<prefix> at a newer NCCL.")
endif()
get_filename_component(MONOMOE_NCCL_LIBRARY_DIR "${MONOMOE_NCCL_LIBRARY}" DIRECTORY)
message(STATUS "monomoe: NCCL ${MONOMOE_NCCL_VERSION}: ${MONOMOE_NCCL_LIBRARY}")
add_library(monomoe::nccl SHARED IMPORTED GLOBAL)
set_target_properties(monomoe::nccl PROPERTIES
  IMPORTED_LOCATION "${MONOMOE_NCCL_LIBRARY}"
  IMPORTED_NO_SONAME OFF
  INTERFACE_INCLUDE_DIRECTORIES "${MONOMOE_NCCL_INCLUDE_DIR}"
  INTERFACE_LINK_OPTIONS "LINKER:-rpath,${MONOMOE_NCCL_LIBRARY_DIR}")
