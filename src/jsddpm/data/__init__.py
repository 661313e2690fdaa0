"""Data ingestion: NIfTI volumes and image folders -> slice cache; the demo cohort; Dataset + augmentation."""
