"""The augmentation layer: synthetic training pairs on the fly with a ground-truth field."""
