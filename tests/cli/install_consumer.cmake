# Installs the build tree into a fresh prefix, then configures, builds and runs tests/consumer
# against it: proof that find_package(monomoe) works for a project outside this tree.
#   cmake -DBUILD_DIR=<monomoe build> -DCONFIG=<build type> -DCONSUMER_SRC=<tests/consumer>
#         -DWORK_DIR=<scratch> -DGENERATOR=<generator> -DCXX=<c++ compiler>
#         -DCUDA_ROOT=<toolkit root> -P install_consumer.cmake
foreach(_v BUILD_DIR CONSUMER_SRC WORK_DIR GENERATOR CXX CUDA_ROOT)
  if(NOT DEFINED ${_v})
    message(FATAL_ERROR "install_consumer.cmake: -D${_v}=... is required")
  endif()
endforeach()

function(step what)
  string(REPLACE ";" " " _shown "${ARGN}")
  message("--- ${what}: ${_shown}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  message("${_out}${_err}")
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "FAILED: ${what} (exit status ${_rc})")
  endif()
  set(STEP_OUTPUT "${_out}" PARENT_SCOPE)
endfunction()

set(_prefix "${WORK_DIR}/prefix")
set(_build "${WORK_DIR}/build")
file(REMOVE_RECURSE "${WORK_DIR}")
set(_config_args)
if(CONFIG)
  set(_config_args --config "${CONFIG}")
endif()

step("install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${_prefix}" ${_config_args})
foreach(_f "lib*/cmake/monomoe/monomoeConfig.cmake" "lib*/libmonomoe.so" include/monomoe/monomoe.hpp
           bin/monomoe)
  file(GLOB _found "${_prefix}/${_f}")
  if(NOT _found)
    message(FATAL_ERROR "FAILED: the install lacks ${_f}")
  endif()
endforeach()

# Only the prefix is given: the consumer must find everything else through monomoeConfig.cmake.
step("configure consumer" "${CMAKE_COMMAND}" -S "${CONSUMER_SRC}" -B "${_build}" -G "${GENERATOR}"
     "-DCMAKE_PREFIX_PATH=${_prefix}" "-DCMAKE_CXX_COMPILER=${CXX}" "-DCUDAToolkit_ROOT=${CUDA_ROOT}"
     -DCMAKE_BUILD_TYPE=Release)
step("build consumer" "${CMAKE_COMMAND}" --build "${_build}" --config Release)

file(GLOB_RECURSE _exe "${_build}/monomoe_consumer" "${_build}/monomoe_consumer.exe")
if(NOT _exe)
  message(FATAL_ERROR "FAILED: the consumer executable was not built")
endif()
list(GET _exe 0 _exe)
step("run consumer" "${_exe}")
if(NOT STEP_OUTPUT MATCHES "consumer: monomoe [0-9.]+: tokens=")
  message(FATAL_ERROR "FAILED: the consumer did not print its config line")
endif()
message("PASSED")
