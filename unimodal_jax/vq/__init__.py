"""Image tokenizers: images to grids of discrete codes and back, run offline before pretraining."""
