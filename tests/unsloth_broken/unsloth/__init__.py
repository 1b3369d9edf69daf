"""An `unsloth` that fails to import the way the real one does on a machine without a GPU (tests only)."""

raise NotImplementedError("Unsloth cannot find any torch accelerator? You need a GPU.")
