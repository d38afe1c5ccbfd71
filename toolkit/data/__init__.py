"""Images on disk to tensors: decoding, scanning, transforms, loaders, sample data."""
