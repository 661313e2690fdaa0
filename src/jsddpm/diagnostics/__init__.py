"""Real-vs-synthetic diagnostics: one module per metric family, pure functions on arrays."""
