"""Running one model over several processes: the tensor-parallel group and the executors."""
