"""Step 3, data: the raw event schema, the append-only event log, the catalog, the simulator."""
