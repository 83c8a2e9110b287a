"""Resource models, document parsing and Kuscia conversion: what users write and what they get back."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from accord.errors import ErrorCode, InvalidArgument
from accord.resources import AppImage, Job, Selector
from accord.resources.documents import parse_documents
from accord.resources.kuscia import EXTRA_ANNOTATION, from_kuscia, to_kuscia
from accord.resources.registry import parse_resource, resolve_kind

KUSCIA_JOB = """
apiVersion: kuscia.secretflow/v1alpha1
kind: KusciaJob
metadata: {name: job-demo, namespace: cross-domain, labels: {team: risk}}
spec:
  initiator: alice
  scheduleMode: BestEffort
  maxParallelism: 2
  flowID: flow-1
  futureField: kept
  tasks:
  - alias: psi
    taskID: job-psi
    priority: 100
    appImage: sf-image
    taskInputConfig: '{"a": 1}'
    scheduleConfig: {taskTimeoutSeconds: 600, resourceReservedSeconds: 30}
    parties:
    - domainID: alice
      role: host
      resources: {cpu: "1", memory: 2Gi}
      bandwidthLimits: [{destinationID: bob, limitKBps: 1000}]
    - {domainID: bob}
  - {alias: split, taskID: job-split, dependencies: [psi], tolerable: true, appImage: sf-image,
     taskInputConfig: '{}', parties: [{domainID: alice}, {domainID: bob}]}
"""

KUSCIA_APPIMAGE = """
apiVersion: kuscia.secretflow/v1alpha1
kind: AppImage
metadata: {name: sf-image}
spec:
  image: {name: secretflow/secretflow-lite-anolis8, tag: latest}
  configTemplates: {task-config.conf: '{"task_id":"{{.TASK_ID}}"}'}
  deployTemplates:
  - name: sf
    replicas: 1
    spec:
      restartPolicy: Never
      containers:
      - name: sf
        command: [sh, -c, "python -m secretflow.kuscia.entry ./kuscia/task-config.conf"]
        workingDir: /work
        env: [{name: LOG_LEVEL, value: debug}]
        configVolumeMounts: [{mountPath: /work/kuscia/task-config.conf, subPath: task-config.conf}]
        ports: [{name: spu, protocol: GRPC, scope: Cluster}]
"""


@pytest.mark.parametrize("text", [KUSCIA_JOB, KUSCIA_APPIMAGE])
def test_kuscia_documents_round_trip_losslessly(text: str) -> None:
    original: dict[str, Any] = yaml.safe_load(text)
    res = from_kuscia(copy.deepcopy(original))
    assert to_kuscia(res) == original


def test_kuscia_job_fields_are_mapped() -> None:
    job = from_kuscia(yaml.safe_load(KUSCIA_JOB))
    assert isinstance(job, Job)
    assert job.spec.schedule_mode == "BestEffort"
    assert job.spec.max_parallelism == 2
    psi = job.spec.tasks[0]
    assert psi.input_config == '{"a": 1}'
    assert psi.parties[0].bandwidth_limits[0].limit_kbps == 1000
    assert psi.schedule_config is not None and psi.schedule_config.task_timeout_seconds == 600
    assert job.spec.tasks[1].tolerable
    assert "futureField" in job.meta.annotations[EXTRA_ANNOTATION]
    assert job.spec.parties() == ["alice", "bob"]


def test_kuscia_appimage_gives_runp_command() -> None:
    image = from_kuscia(yaml.safe_load(KUSCIA_APPIMAGE))
    assert isinstance(image, AppImage)
    assert image.spec.command[:2] == ["sh", "-c"]
    assert image.spec.ports[0].name == "spu"
    assert image.spec.env == {"LOG_LEVEL": "debug"}
    assert image.spec.config_mounts == {"task-config.conf": "/work/kuscia/task-config.conf"}


def test_invalid_fields_are_named() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_resource(
            {
                "kind": "Job",
                "meta": {"name": "j"},
                "spec": {"initiator": "alice", "max_parallelism": 0, "tasks": []},
            }
        )
    assert info.value.code == ErrorCode.JOB_INVALID
    assert "spec.max_parallelism" in info.value.message
    assert "spec.tasks" in info.value.message


def test_duplicate_alias_and_party_are_refused() -> None:
    task = {"alias": "a", "app_image": "x", "parties": [{"domain": "alice"}]}
    with pytest.raises(InvalidArgument, match="task alias 'a' is used by more than one task"):
        parse_resource(
            {"kind": "Job", "meta": {"name": "j"}, "spec": {"initiator": "alice", "tasks": [task, task]}}
        )
    twice = {**task, "parties": [{"domain": "alice"}, {"domain": "alice"}]}
    with pytest.raises(InvalidArgument, match="listed twice"):
        parse_resource(
            {"kind": "Job", "meta": {"name": "j"}, "spec": {"initiator": "alice", "tasks": [twice]}}
        )


def test_unknown_fields_are_errors_not_dropped() -> None:
    with pytest.raises(InvalidArgument, match=r"spec\.comand: Extra inputs are not permitted"):
        parse_resource({"kind": "AppImage", "meta": {"name": "x"}, "spec": {"comand": ["x"]}})


def test_malformed_yaml_names_the_line() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_documents("kind: Job\nmeta: {name: x\n")
    assert info.value.code == ErrorCode.MALFORMED_DOCUMENT
    assert "line 3" in info.value.message


def test_multi_document_error_names_the_document() -> None:
    text = "kind: AppImage\nmeta: {name: a}\nspec: {}\n---\nkind: AppImage\nmeta: {name: B}\nspec: {}\n"
    with pytest.raises(InvalidArgument, match=r"document 2: invalid AppImage: meta\.name"):
        parse_documents(text)


def test_kind_aliases_and_unknown_kind() -> None:
    assert resolve_kind("jobs") == "Job"
    assert resolve_kind("routes") == "DomainRoute"
    with pytest.raises(InvalidArgument) as info:
        resolve_kind("gizmo")
    assert info.value.code == ErrorCode.UNKNOWN_KIND
    assert "Job" in info.value.message


def test_label_selectors() -> None:
    sel = Selector.parse("app=psi,tier!=gold,owner,!temp")
    assert sel.matches({"app": "psi", "owner": "x"})
    assert not sel.matches({"app": "psi", "owner": "x", "temp": "1"})
    assert not sel.matches({"app": "psi", "tier": "gold", "owner": "x"})
    assert not sel.matches({"app": "lr", "owner": "x"})
    with pytest.raises(InvalidArgument, match="not a valid label key"):
        Selector.parse("bad key=1")
