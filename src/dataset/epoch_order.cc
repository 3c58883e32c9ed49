// EpochOrder: stateless epoch permutations (being written).
#include "granary/dataset.h"
