"""End-to-end jobs built from the package's parts (the quickstart and its report)."""
