# C/C++ dependencies, all from Debian packages.
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
pkg_check_modules(LIBURING REQUIRED IMPORTED_TARGET liburing)
pkg_check_modules(LIBISAL REQUIRED IMPORTED_TARGET libisal)
pkg_check_modules(LIBXXHASH REQUIRED IMPORTED_TARGET libxxhash)
# Tar and compressed-stream reading for `granary pack`; linked by the CLI only.
if(GRANARY_BUILD_CLI)
  pkg_check_modules(LIBARCHIVE REQUIRED IMPORTED_TARGET libarchive)
endif()
# HTTP for the S3 driver (src/store/s3).
pkg_check_modules(LIBCURL REQUIRED IMPORTED_TARGET libcurl)
# XML of S3 responses (src/store/s3).
pkg_check_modules(EXPAT REQUIRED IMPORTED_TARGET expat)
# SHA-256 and HMAC for S3 request signing (src/store/s3).
find_package(OpenSSL 3 REQUIRED COMPONENTS Crypto)
# Header-only; used for manifests (never in public headers).
find_package(nlohmann_json 3.10 REQUIRED)

# Everything the layers link privately, gathered once.
add_library(granary_deps INTERFACE)
target_link_libraries(granary_deps INTERFACE
  PkgConfig::LIBURING PkgConfig::LIBISAL PkgConfig::LIBXXHASH OpenSSL::Crypto PkgConfig::EXPAT PkgConfig::LIBCURL
  Threads::Threads
  $<BUILD_INTERFACE:nlohmann_json::nlohmann_json>)
