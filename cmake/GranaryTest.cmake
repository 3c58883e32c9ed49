# granary_add_test(NAME [IO_BOTH] SOURCES...): a gtest executable linked against the library and
# registered with ctest. Tests may include private headers under src/. With IO_BOTH the tests are
# registered twice: once with the default I/O engine (io_uring) and once with GRANARY_IO=psync,
# so every I/O-touching behaviour is checked on both engines.
function(granary_add_test name)
  if(NOT GRANARY_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(arg "IO_BOTH" "" "" ${ARGN})
  add_executable(${name} ${arg_UNPARSED_ARGUMENTS})
  target_link_libraries(${name} PRIVATE granary granary_internal granary_deps
                        GTest::gtest GTest::gtest_main)
  set(tmp "GRANARY_TEST_TMPDIR=${CMAKE_BINARY_DIR}/test-tmp")
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES ENVIRONMENT "${tmp}")
  if(arg_IO_BOTH)
    gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 TEST_PREFIX "psync."
      PROPERTIES ENVIRONMENT "${tmp};GRANARY_IO=psync")
  endif()
endfunction()
