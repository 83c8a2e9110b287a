"""Which data a task's engine may touch: the bridge from a one-time task token to a DataMesh TaskGrant.

DataMesh knows nothing of tasks; the node does.  When an engine presents its `ACCORD_TASK_TOKEN`, the
node finds the live (non-terminal) Task whose stored token hash matches and derives what it was given
from its input config: the psi convention `{"inputs": {"<domain>": {"data": "<id>"}}}` names this
party's input, and a plain list `{"inputs": ["<id>", ...]}` names several.  The output the task may
create is `<task>-output` (the convention every built-in engine follows), so one engine cannot
overwrite or register data under another task's name.
"""

from __future__ import annotations

import json
from typing import Any

from accord.datamesh.wire import TaskGrant
from accord.resources.job import Task
from accord.resources.phases import TASK_TERMINAL
from accord.runtimes.contract import TOKEN_ANNOTATION, token_sha256
from accord.settings import NodeSettings
from accord.store.base import Store


def task_inputs(input_config: str, domain: str) -> set[str]:
    """DomainData ids a task's config gives to `domain`'s party."""
    try:
        config: Any = json.loads(input_config) if input_config else {}
    except ValueError:
        return set()
    if not isinstance(config, dict):
        return set()
    inputs = config.get("inputs")
    if isinstance(inputs, list):
        return {str(i) for i in inputs if isinstance(i, str)}
    if isinstance(inputs, dict):
        mine = inputs.get(domain)
        if isinstance(mine, dict) and isinstance(mine.get("data"), str):
            return {mine["data"]}
    return set()


async def resolve_task_token(store: Store, settings: NodeSettings, token: str) -> TaskGrant | None:
    digest = token_sha256(token)
    for obj in await store.list(Task.KIND):
        if not isinstance(obj, Task) or obj.meta.annotations.get(TOKEN_ANNOTATION) != digest:
            continue
        if obj.status.phase in TASK_TERMINAL:
            return None
        return TaskGrant(
            task=obj.meta.name,
            job=obj.spec.job,
            domain=settings.domain,
            inputs=task_inputs(obj.spec.input_config, settings.domain),
            outputs_allowed=True,
            outputs={f"{obj.meta.name}-output"},
            app=obj.spec.app_image,
        )
    return None
