"""Data: preparation of user datasets, the bundled sample cohort, CT phantoms, loaders."""
