"""ctypes layer over the patched libllama: owners of models, segment contexts and batches."""
