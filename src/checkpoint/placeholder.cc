// replaced by the checkpoint format layer
