// Runs the conformance suite against the drivers in this repository.
#include "store/testing/store_conformance.h"

namespace granary::testing {

INSTANTIATE_TEST_SUITE_P(Drivers, StoreConformanceTest,
                         ::testing::Values(LocalStoreConformanceParam(),
                                           MemoryStoreConformanceParam()),
                         ConformanceParamName);

}  // namespace granary::testing
