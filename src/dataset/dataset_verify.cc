// Dataset::Verify: the full check that opening deliberately skips. For every segment: the index
// (object crc, entries crc, monotonic, shard boundaries), every record of every shard (header,
// crc32c, length, field ids) read sequentially in large pieces, and the key table (object crc,
// entries crc, sorted, each entry's hash equal to the XXH3-64 of that sample's key).
#include <algorithm>

#include "core/checksum.h"
#include "dataset/dataset_format.h"
#include "dataset/dataset_reader.h"
#include "dataset/dataset_record.h"

namespace granary::dataset {
namespace {

constexpr size_t kVerifyReadBytes = 8u << 20;

Status CheckTable(const TableObject& t, const ObjectRef& ref, std::string_view magic,
                  uint64_t count, const std::string& what) {
  if (Crc32c(t.data(), t.size()) != ref.crc32c) {
    return DataLossError(what + ": crc32c differs from the manifest's");
  }
  const size_t header = kIndexHeaderBytes;
  GRANARY_ASSIGN_OR_RETURN(uint32_t entries_crc,
                           CheckTableHeader(std::span(t.data(), header), magic, count, what));
  if (Crc32c(t.data() + header, t.size() - header) != entries_crc) {
    return DataLossError(what + ": entries crc32c mismatch");
  }
  return Status::OK();
}

}  // namespace

Status DatasetImpl::VerifySegment(uint32_t segment) {
  SegmentState& seg = *segments_[segment];
  const SegmentEntry& e = seg.entry;
  const uint64_t n = e.num_samples;
  const std::string index_name = "index " + JoinKey(prefix_, e.index.key);
  GRANARY_RETURN_IF_ERROR(CheckTable(seg.index, e.index, kIndexMagic, n, index_name));
  const std::byte* entries = seg.index.data() + kIndexHeaderBytes;
  auto offset_at = [&](uint64_t i) { return LoadLe<uint64_t>(entries + 8 * i); };
  if (offset_at(0) != 0 || offset_at(n) != e.record_bytes) {
    return DataLossError(index_name + ": does not span the segment's " +
                         std::to_string(e.record_bytes) + " record bytes");
  }

  // Records, shard by shard, in index order; key hashes kept for the key table check.
  std::vector<uint64_t> key_hashes(n);
  std::vector<std::byte> buf;
  std::vector<ParsedField> fields;
  uint32_t first_shard = 0;
  while (shard_states_[first_shard].segment != segment) ++first_shard;
  for (uint32_t s = first_shard; s < shard_states_.size() && shard_states_[s].segment == segment;
       ++s) {
    const ShardState& sh = shard_states_[s];
    header_checked_[s].store(0);  // re-read the header, whatever was checked before
    GRANARY_RETURN_IF_ERROR(CheckHeaderOnce(s));
    const uint64_t first = sh.first_sample - e.first_sample;
    if (offset_at(first) != sh.segment_base) {
      return DataLossError(index_name + ": shard " + sh.key + " does not start at entry " +
                           std::to_string(first));
    }
    uint64_t buf_start = 0, buf_end = 0;  // shard offsets held in buf
    for (uint64_t i = first; i < first + sh.num_samples; ++i) {
      const uint64_t index = e.first_sample + i;
      GRANARY_ASSIGN_OR_RETURN(RecordSpan r, LocateRecord(index));
      if (r.offset < buf_start || r.offset + r.length > buf_end) {
        const uint64_t want = std::min<uint64_t>(std::max<uint64_t>(kVerifyReadBytes, r.length),
                                                 sh.size_bytes - r.offset);
        buf.resize(want);
        GRANARY_ASSIGN_OR_RETURN(size_t got, ReadShard(s, r.offset, buf));
        if (got < r.length) {
          return DataLossError("shard " + sh.key + " sample " + std::to_string(index) +
                               ": record truncated");
        }
        buf_start = r.offset;
        buf_end = r.offset + got;
      }
      std::string_view key;
      fields.clear();
      Status st = ParseRecord(std::span(buf.data() + (r.offset - buf_start), r.length),
                              /*verify_crc=*/true, &key, &fields);
      for (const ParsedField& f : fields) {
        if (st.ok() && f.id >= fields_->names.size()) {
          st = DataLossError("field id " + std::to_string(f.id) + " not in the field table");
        }
      }
      if (!st.ok()) return st.WithContext("shard " + sh.key + " sample " + std::to_string(index));
      key_hashes[i] = Xxh3_64(key.data(), key.size());
    }
  }

  // Key table: sorted by (hash, index), each entry naming a sample whose key has that hash.
  std::call_once(seg.keys_once, [&] { seg.keys_status = OpenKeys(seg); });
  GRANARY_RETURN_IF_ERROR(seg.keys_status);
  const std::string keys_name = "key table " + JoinKey(prefix_, e.keys.key);
  GRANARY_RETURN_IF_ERROR(CheckTable(seg.keys, e.keys, kKeysMagic, n, keys_name));
  const std::byte* k = seg.keys.data() + kKeysHeaderBytes;
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t hash = LoadLe<uint64_t>(k + kKeyEntryBytes * i);
    const uint64_t local = LoadLe<uint64_t>(k + kKeyEntryBytes * i + 8);
    const bool sorted = i == 0 || std::pair(LoadLe<uint64_t>(k + kKeyEntryBytes * (i - 1)),
                                            LoadLe<uint64_t>(k + kKeyEntryBytes * (i - 1) + 8)) <
                                      std::pair(hash, local);
    if (!sorted || local >= n || key_hashes[local] != hash) {
      return DataLossError(keys_name + ": entry " + std::to_string(i) +
                           " is out of order or does not match sample " + std::to_string(local));
    }
  }
  return Status::OK();
}

Status DatasetImpl::Verify() {
  for (uint32_t s = 0; s < segments_.size(); ++s) GRANARY_RETURN_IF_ERROR(VerifySegment(s));
  return Status::OK();
}

}  // namespace granary::dataset
