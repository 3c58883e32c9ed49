// The S3Store's streaming writer: a multipart upload with parts in flight in the background
// (s3_store.h states the promises). Parts are staged in max_parts_in_flight buffers of
// part_bytes, allocated once per writer and reused; Append blocks while all are in flight.
#ifndef GRANARY_STORE_S3_S3_WRITER_H_
#define GRANARY_STORE_S3_S3_WRITER_H_

#include <memory>
#include <string>

#include "granary/store.h"
#include "store/s3/s3_transport.h"

namespace granary::s3 {

// S3's smallest part (all but the last) and most parts per upload.
inline constexpr size_t kMinPartBytes = size_t{5} << 20;
inline constexpr int kMaxParts = 10000;

// `object_key` is the full key in the bucket; `key` the store key, for messages.
std::unique_ptr<ObjectWriter> NewS3Writer(std::shared_ptr<Transport> transport,
                                          std::string object_key, const WriterOptions& options);

}  // namespace granary::s3

#endif  // GRANARY_STORE_S3_S3_WRITER_H_
