// The S3 server the tests run against, from the environment `scripts/ceph-rgw.sh start` writes
// (make test exports it): GRANARY_TEST_S3_ENDPOINT, GRANARY_TEST_S3_ACCESS_KEY,
// GRANARY_TEST_S3_SECRET_KEY, GRANARY_TEST_S3_REGION. Without them the server tests skip, unless
// GRANARY_REQUIRE_S3=1 (set by make test), which turns the absence into a failure. Test-only.
#ifndef GRANARY_STORE_S3_S3_TEST_ENV_H_
#define GRANARY_STORE_S3_S3_TEST_ENV_H_

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>

#include "store/s3/s3_config.h"

namespace granary::s3::testing {

inline std::string TestEnv(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

// Why the S3 server tests cannot run here ("" when they can, or when they are required).
inline std::string S3SkipReason() {
  if (!TestEnv("GRANARY_TEST_S3_ENDPOINT").empty()) return "";
  if (TestEnv("GRANARY_REQUIRE_S3") == "1") return "";
  return "no S3 server: run scripts/ceph-rgw.sh start and export its env (make test does)";
}

// Settings for `bucket`/`prefix` on the test server; nullopt when the environment names none.
inline std::optional<S3Settings> TestS3Settings(const std::string& bucket,
                                                const std::string& prefix) {
  const std::string endpoint = TestEnv("GRANARY_TEST_S3_ENDPOINT");
  if (endpoint.empty()) return std::nullopt;
  S3Settings s;
  s.bucket = bucket;
  s.prefix = prefix;
  const size_t p = endpoint.find("://");
  s.scheme = endpoint.substr(0, p);
  s.host = endpoint.substr(p + 3);
  s.region = TestEnv("GRANARY_TEST_S3_REGION").empty() ? "us-east-1"
                                                       : TestEnv("GRANARY_TEST_S3_REGION");
  s.path_style = true;
  s.credentials = {TestEnv("GRANARY_TEST_S3_ACCESS_KEY"), TestEnv("GRANARY_TEST_S3_SECRET_KEY"),
                   ""};
  s.create_bucket = true;
  return s;
}

// The s3:// URL of `bucket`/`prefix` on the test server (credentials in the query).
inline std::string TestS3Url(const std::string& bucket, const std::string& prefix) {
  return "s3://" + bucket + "/" + prefix + "?endpoint=" + TestEnv("GRANARY_TEST_S3_ENDPOINT") +
         "&access_key_id=" + TestEnv("GRANARY_TEST_S3_ACCESS_KEY") +
         "&secret_access_key=" + TestEnv("GRANARY_TEST_S3_SECRET_KEY") + "&create_bucket=true";
}

// A fresh prefix per test: "<tag>-<16 hex>".
inline std::string UniquePrefix(const std::string& tag) {
  std::random_device rd;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
  return tag + "-" + buf;
}

}  // namespace granary::s3::testing

#endif  // GRANARY_STORE_S3_S3_TEST_ENV_H_
