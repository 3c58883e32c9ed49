// replaced by the store layer
