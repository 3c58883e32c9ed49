// A minimal libcurl-easy HTTP client for the tests of the S3 test helpers: one blocking request,
// the curl result code, status, headers and body. Requests carry a syntactically valid but
// unverified SigV4 Authorization header by default, because moto (which does not check
// signatures) refuses anonymous GETs of private objects with 403. Test-only.
#ifndef GRANARY_STORE_S3_TESTING_HTTP_TEST_CLIENT_H_
#define GRANARY_STORE_S3_TESTING_HTTP_TEST_CLIENT_H_

#include <curl/curl.h>

#include <string>
#include <vector>

namespace granary::s3::testing {

struct HttpRequest {
  std::string method = "GET";        // GET, HEAD, PUT, POST, DELETE
  std::string url{};                 // full URL, already percent-encoded
  std::string body{};                // sent with PUT (as an upload) and POST
  std::vector<std::string> headers{};  // extra "Name: value" lines; "Expect:" disables Expect
  long timeout_ms = 0;               // 0: no timeout
  bool fake_auth = true;             // add the unverified Authorization header
};

struct HttpResponse {
  CURLcode code = CURLE_OK;  // CURLE_PARTIAL_FILE, CURLE_RECV_ERROR, ... for transport faults
  long status = 0;           // 0 when no response line arrived
  std::string headers;       // raw header block(s) as received, lower/upper case kept
  std::string body;          // the bytes received, even when the transfer failed
};

// Performs one request on a fresh connection. Thread-compatible (one call per thread).
HttpResponse Http(const HttpRequest& request);

}  // namespace granary::s3::testing

#endif  // GRANARY_STORE_S3_TESTING_HTTP_TEST_CLIENT_H_
