"""Weight formats: each module maps one source layout onto our module names."""
