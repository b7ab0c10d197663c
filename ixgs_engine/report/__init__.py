"""Reports for people: a self-contained HTML page per run, and clinical rating sheets."""
