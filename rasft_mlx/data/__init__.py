"""Problems: readers for each data format, the synthetic generator, answer verification, chat encoding."""
