"""DataMesh: every byte an engine reads or writes goes through here (DESIGN.md section 5).

- `sources`   the DataSource protocol and the localfs backend (confined, atomic writes)
- `columns`   Arrow types <-> the column type names a DomainData records
- `registry`  the default data source, registering files and task outputs (with lineage)
- `grants`    `authorize_read`: owner or a live DomainDataGrant, use counted atomically, audited
- `wire`      the Flight protocol: TaskGrant, JSON commands, errors on the wire
- `flight`    `DataMeshService`: the Arrow Flight server on loopback, bridged to the node's event loop

Engines use `accord.engines.dataio` (they cannot import this package).
"""
