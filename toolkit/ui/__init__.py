"""Terminal output (console, progress, tables) and plots."""
