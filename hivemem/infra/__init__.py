"""The infrastructure layer: settings, file locations, locks and SQLite, which every part may use
and which import nothing of hivemem but its error tree."""
