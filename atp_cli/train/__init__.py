"""torch side of ATP: layer-wise attention control on transformers models, training, the hard-pruning reference."""
