"""engines/shared_memory: P worker processes on one model in shared memory."""
