#include "core/envelope.h"

#include "core/checksum.h"

namespace granary {
namespace {

void PutLe(std::string& out, uint64_t v, int width) {
  for (int i = 0; i < width; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t LoadLe(std::string_view bytes, size_t pos, int width) {
  uint64_t v = 0;
  for (int i = width - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(bytes[pos + i]);
  return v;
}

}  // namespace

std::string WrapEnvelope(std::string_view magic, uint32_t version, std::string_view body) {
  std::string out;
  out.reserve(kEnvelopeHeaderBytes + body.size() + kEnvelopeTrailerBytes);
  out.append(magic.substr(0, kEnvelopeMagicBytes));
  out.resize(kEnvelopeMagicBytes, ' ');
  PutLe(out, version, 4);
  PutLe(out, body.size(), 8);
  out.append(body);
  PutLe(out, Crc32c(out), 4);
  return out;
}

Result<std::string_view> UnwrapEnvelope(std::string_view bytes, std::string_view magic,
                                        uint32_t version, uint64_t max_body_bytes,
                                        std::string_view kind, std::string_view key) {
  const std::string where = std::string(kind) + " " + std::string(key);
  if (bytes.size() < kEnvelopeHeaderBytes + kEnvelopeTrailerBytes) {
    return DataLossError(where + ": truncated (" + std::to_string(bytes.size()) + " bytes)");
  }
  if (bytes.substr(0, kEnvelopeMagicBytes) != magic) {
    return DataLossError(where + ": wrong magic (not a granary " + std::string(kind) + ")");
  }
  const uint64_t body_bytes = LoadLe(bytes, 12, 8);
  const uint64_t expected = bytes.size() - kEnvelopeHeaderBytes - kEnvelopeTrailerBytes;
  if (body_bytes != expected || body_bytes > max_body_bytes) {
    return DataLossError(where + ": body length " + std::to_string(body_bytes) +
                         " but object has " + std::to_string(expected) +
                         " body bytes (truncated or corrupt)");
  }
  const size_t crc_pos = bytes.size() - kEnvelopeTrailerBytes;
  const uint32_t stored = static_cast<uint32_t>(LoadLe(bytes, crc_pos, 4));
  if (Crc32c(bytes.substr(0, crc_pos)) != stored) {
    return DataLossError(where + ": crc32c mismatch");
  }
  const uint32_t found = static_cast<uint32_t>(LoadLe(bytes, 8, 4));
  if (found != version) {
    return InvalidArgumentError(where + ": format version " + std::to_string(found) +
                                " is not supported (this build reads version " +
                                std::to_string(version) + ")");
  }
  return bytes.substr(kEnvelopeHeaderBytes, body_bytes);
}

}  // namespace granary
