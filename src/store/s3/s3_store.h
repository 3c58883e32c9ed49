// S3Store: an ObjectStore kept in a bucket of an S3-compatible object store (AWS S3, Ceph RGW,
// MinIO, OSS, COS), under an optional key prefix: the object `a/b` of
// s3://bucket/runs?endpoint=... is the S3 object "runs/a/b".
//
// How the store.h promises are kept:
//   * Put is one PUT; S3 makes a PUT visible atomically and durably when it answers 200.
//   * Writers stream parts of WriterOptions::part_bytes (at least 5 MiB, S3's minimum) as a
//     multipart upload, several parts in flight; Commit completes the upload (atomic on S3).
//     Abort, a failed part, or destroying the writer aborts the upload; a process killed mid-way
//     leaves an incomplete upload that is invisible to readers (a bucket lifecycle rule
//     AbortIncompleteMultipartUpload reclaims its space). A writer that never filled a part
//     commits with one PUT. At most 10000 parts per object (S3's limit): part_bytes bounds the
//     object size at 10000 * part_bytes, and exceeding it fails with ResourceExhausted.
//   * PutIfAbsent sends `If-None-Match: *`; the server answers 412 to all but one creator.
//     Whether the server enforces it is probed when the store opens (a create-only PUT twice on
//     a scratch key under <prefix>/.granary/); where it is not enforced (old servers), the store
//     falls back to HEAD-then-PUT, which is not safe against concurrent creators, and
//     conditional_put_enforced() says so.
//   * A Get is one ranged GET, so it reads one version of the object.
//   * Delete is HEAD then DELETE (S3's DELETE succeeds on absent keys; store.h wants NotFound).
//
// Keys under the prefix whose components start with ".granary" are the driver's own and are
// never listed. Listing is ListObjectsV2 with url-encoded keys, so every valid key round-trips.
// Errors name s3://bucket/key, the HTTP status, the server's code and request id (transport.h).
//
// Thread-safe; writers may outlive the store handle.
#ifndef GRANARY_STORE_S3_S3_STORE_H_
#define GRANARY_STORE_S3_S3_STORE_H_

#include <memory>

#include "granary/status.h"
#include "granary/store.h"
#include "store/s3/s3_config.h"
#include "store/s3/s3_transport.h"
#include "store/url.h"

namespace granary::s3 {

struct S3StoreOptions {
  TransportOptions transport;
  // What url() returns; "" -> "s3://bucket/prefix".
  std::string url;
};

// Opens the store for `settings`. Checks the bucket exists (NotFound naming it and the endpoint
// otherwise, unless settings.create_bucket, which creates it; Unavailable when the endpoint
// cannot be reached after retries) and probes conditional PUTs.
Result<std::unique_ptr<ObjectStore>> NewS3Store(S3Settings settings,
                                                const S3StoreOptions& options = {});

// Opens s3://... with settings resolved from the URL, the environment and ~/.aws (s3_config.h).
// url() is the URL without secret_access_key and session_token (they belong in the environment
// or a profile; a store reopened from url() in another process finds them there).
Result<std::unique_ptr<ObjectStore>> OpenS3Store(const StoreUrl& url);

// True when the server behind `store` (an S3Store) rejected a second create-only PUT at open.
bool ConditionalPutEnforced(const ObjectStore& store);

}  // namespace granary::s3

#endif  // GRANARY_STORE_S3_S3_STORE_H_
