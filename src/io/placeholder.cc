// replaced by the I/O engine
