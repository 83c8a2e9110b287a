"""The node daemon: one process per domain hosting the store, controllers, API and gateway modules."""
