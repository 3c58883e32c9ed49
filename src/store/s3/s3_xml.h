// The XML of S3 responses, parsed with expat, and the XML bodies granary sends. Only the fields
// the S3Store uses are read; unknown elements are ignored (servers add their own). Servers differ
// in namespaces and whitespace, so element names are matched without their namespace prefix.
//
// Pure functions; thread-safe.
#ifndef GRANARY_STORE_S3_S3_XML_H_
#define GRANARY_STORE_S3_S3_XML_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "granary/status.h"

namespace granary::s3 {

struct ListedObject {
  std::string key;
  uint64_t size_bytes = 0;
  int64_t mtime_ns = 0;  // LastModified; 0 if absent or unparsable
  std::string etag;      // without quotes
};

// ListObjectsV2 (GET /bucket?list-type=2). Keys are percent-decoded when the response says
// <EncodingType>url</EncodingType> (granary asks for it, so keys with control characters
// survive XML).
struct ListResult {
  std::vector<ListedObject> objects;
  std::vector<std::string> common_prefixes;
  bool truncated = false;
  std::string next_continuation_token;
};
// DataLoss naming `what` (bucket and prefix) for malformed XML or a missing/garbled Size.
Result<ListResult> ParseListObjectsV2(std::string_view xml, std::string_view what);

// An <Error> document: Code, Message, RequestId, Resource. nullopt when `xml` is not one (a
// CompleteMultipartUpload can answer 200 OK with an <Error> body, so callers check both).
struct S3Error {
  std::string code;
  std::string message;
  std::string request_id;
  std::string resource;
};
std::optional<S3Error> ParseError(std::string_view xml);

// <InitiateMultipartUploadResult><UploadId>: the upload id. DataLoss naming `what` if absent.
Result<std::string> ParseUploadId(std::string_view xml, std::string_view what);

// The body of CompleteMultipartUpload for parts (number, ETag) in ascending order.
std::string CompleteMultipartUploadBody(std::span<const std::pair<int, std::string>> parts);

// "2009-10-12T17:50:30.000Z" -> nanoseconds since the epoch; nullopt if not that form.
std::optional<int64_t> ParseIso8601(std::string_view s);

// XML character escaping for text content (&, <, >, ", ').
std::string XmlEscape(std::string_view s);

}  // namespace granary::s3

#endif  // GRANARY_STORE_S3_S3_XML_H_
