"""training.data: the one video decoding, sampling and preprocessing path, plus dataset formats."""
