"""Storage of session logs: layout, cursors, line classification, index, appends."""
