"""Memory policies: `full` (no compression), a scorer under budgets, frame dropping."""
