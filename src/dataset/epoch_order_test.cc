#include <gtest/gtest.h>

#include "granary/dataset.h"
