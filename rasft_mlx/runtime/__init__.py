"""The process runtime: the BLAS preload, memory, ranks over mx.distributed, atomic files, the version."""
