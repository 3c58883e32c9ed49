// Batches the Loader builds out of other batches: a private copy of one sample (what the
// next-epoch cache holds) and a batch composed of samples from several sources (cache hits
// interleaved with freshly read samples, in the order the epoch asks for).
#ifndef GRANARY_DATASET_LOADER_BATCHES_H_
#define GRANARY_DATASET_LOADER_BATCHES_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "granary/dataset.h"

namespace granary::dataset {

// A one-sample batch holding its own copy of sample `i` of `source` (which must be ok(i)).
// Memory: one allocation of about the record's size.
std::shared_ptr<Batch> CopySample(const Batch& source, size_t i);

// One sample of a composed batch: sample `i` of `batch`.
struct SampleRef {
  std::shared_ptr<Batch> batch;
  size_t i = 0;
};

// A batch whose samples live in other batches (kept alive by it).
std::shared_ptr<Batch> ComposeBatch(std::vector<SampleRef> samples);

}  // namespace granary::dataset

#endif  // GRANARY_DATASET_LOADER_BATCHES_H_
