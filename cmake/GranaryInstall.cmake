# make install: the C++ library, public headers, the CLI and a CMake package config so that
# another project can find_package(granary) and link granary::granary.
include(CMakePackageConfigHelpers)
install(TARGETS granary granary_headers EXPORT granaryTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
install(DIRECTORY include/granary DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT dev)
install(EXPORT granaryTargets NAMESPACE granary::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/granary COMPONENT dev)
configure_package_config_file(cmake/granaryConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/granaryConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/granary)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/granaryConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/granaryConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/granaryConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/granary COMPONENT dev)
