"""Golden histories: the exact bytes of recorded runs, with their expected final states."""
