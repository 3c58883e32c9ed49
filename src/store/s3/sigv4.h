// AWS Signature Version 4 (header-based), as every S3-compatible server checks it: AWS S3, Ceph
// RGW, MinIO, OSS and COS in S3 mode. Reference: "Authenticating Requests: Using the
// Authorization Header (AWS Signature Version 4)", Amazon S3 API Reference, and the AWS SigV4
// test suite. Pinned by the published examples and by vectors computed with botocore's signer
// (sigv4_test.cc).
//
// S3 rules followed here: the canonical URI is the request path exactly as sent (already
// percent-encoded once; S3 does not normalize or double-encode it); query names and values are
// encoded with RFC 3986 unreserved characters kept and '/' encoded; header values are trimmed and
// inner runs of spaces collapsed; duplicate header names are joined with ','.
//
// Pure functions; thread-safe. OpenSSL's libcrypto provides SHA-256 and HMAC.
#ifndef GRANARY_STORE_S3_SIGV4_H_
#define GRANARY_STORE_S3_SIGV4_H_

#include <chrono>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace granary::s3 {

struct Credentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // empty unless temporary credentials
};

// One HTTP request to sign.
struct SignRequest {
  std::string method;  // "GET", "PUT", ...
  // The path as sent on the wire, percent-encoded once ("/bucket/a%20b.txt").
  std::string path;
  // Query parameters, not encoded (UriEncode is applied while signing). A parameter without a
  // value ("?uploads") has an empty value.
  std::vector<std::pair<std::string, std::string>> query;
  // Headers to sign and send; must include "host". Signing adds x-amz-date and, with a session
  // token, x-amz-security-token.
  std::vector<std::pair<std::string, std::string>> headers;
  // Hex SHA-256 of the body, or "UNSIGNED-PAYLOAD". S3 requires it in x-amz-content-sha256 too
  // (the caller adds that header).
  std::string payload_sha256;
};

struct SignScope {
  std::string region = "us-east-1";
  std::string service = "s3";
  std::string amz_date;  // "20130524T000000Z": the request time, UTC
};

// RFC 3986 percent-encoding as SigV4 requires: A-Z a-z 0-9 - . _ ~ kept, everything else %XX
// (uppercase hex); '/' kept unless `encode_slash`.
std::string UriEncode(std::string_view s, bool encode_slash);

// The inverse: %XX sequences decoded, anything else (a stray '%' included) kept as it is. For
// URL query values and the url-encoded keys of listings.
std::string UriDecode(std::string_view s);

// Lowercase hex SHA-256 of `data`.
std::string Sha256Hex(std::span<const std::byte> data);
inline std::string Sha256Hex(std::string_view s) {
  return Sha256Hex(std::as_bytes(std::span(s.data(), s.size())));
}
// SHA-256 of the empty string, hex: the payload hash of every body-less request.
inline constexpr std::string_view kEmptySha256 =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

// "YYYYMMDDTHHMMSSZ" of `t` in UTC.
std::string AmzDate(std::chrono::system_clock::time_point t);

// The canonical request (step 1 of the algorithm) and its signed-header list, for tests and
// for the "SignatureDoesNotMatch" diagnostics servers return.
struct Canonical {
  std::string request;
  std::string signed_headers;  // "host;range;x-amz-content-sha256;x-amz-date"
};
Canonical CanonicalRequest(const SignRequest& request);

// Signs `request` in place: adds x-amz-date (and x-amz-security-token), then returns the value
// of the Authorization header ("AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
// Signature=..."). The caller sends request.headers plus Authorization.
std::string Sign(SignRequest& request, const Credentials& credentials, const SignScope& scope);

}  // namespace granary::s3

#endif  // GRANARY_STORE_S3_SIGV4_H_
