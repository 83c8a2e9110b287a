"""Prepare-time check of a party's own inputs, before any engine starts anywhere.

Engines that follow the data convention of the built-in ones (`{"inputs": {"<domain>": {"data": id,
"keys": [...]}}}` in the task config: the PSI engines) name, per party, a DomainData and its key
columns.  Each party checks its own entry when it prepares: the DomainData exists here, has every key
column, and this domain may read it -- it owns it, or holds a live DomainDataGrant for it (the same
rule DataMesh enforces at read time, `datamesh.grants.authorize_read`, evaluated without spending a
use), so an expired, exhausted or revoked grant fails the task before any engine starts.  A problem
fails the task during the all-or-nothing prepare, so no party starts an engine, and the message names
the party, the data and the column, e.g. "party bob: key column 'uid' is not a column of DomainData
'transactions' (columns: id, amount)".
"""

from __future__ import annotations

import json
from typing import Any

from accord.datamesh.grants import authorize_read
from accord.errors import AccordError, NotFound
from accord.resources.data import DomainData
from accord.resources.job import Task
from accord.store.base import Store


async def input_problem(store: Store, task: Task, me: str) -> str:
    """'' when this party's inputs are usable, else a message naming the party and what is wrong."""
    try:
        config: Any = json.loads(task.spec.input_config) if task.spec.input_config else {}
    except ValueError:
        return ""  # the engine's own validation reports malformed configs
    inputs = config.get("inputs") if isinstance(config, dict) else None
    mine = inputs.get(me) if isinstance(inputs, dict) else None
    if not isinstance(mine, dict) or not isinstance(mine.get("data"), str):
        return ""
    name = mine["data"]
    try:
        data = await store.get(DomainData.KIND, name)
    except NotFound:
        return f"party {me}: DomainData {name!r} not found on {me} (register it with `accord data add`)"
    assert isinstance(data, DomainData)
    columns = [c.name for c in data.spec.columns]
    keys = mine.get("keys")
    if columns and isinstance(keys, list):
        for key in keys:
            if key not in columns:
                return (
                    f"party {me}: key column {key!r} is not a column of DomainData {name!r} "
                    f"(columns: {', '.join(columns)})"
                )
    try:
        await authorize_read(
            store,
            domain_data=data,
            requester_domain=me,
            task=task.meta.name,
            job=task.spec.job,
            app=task.spec.app_image,
            local_domain=me,
            consume=False,
        )
    except AccordError as exc:
        return f"party {me}: {exc.message}"
    return ""
