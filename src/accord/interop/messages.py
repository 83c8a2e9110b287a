"""The node-to-node messages (protocol version 1): what one node may say to another about a job.

Every message is a pydantic model with a version field `v`; a node refuses a version it does not speak
(`InvalidArgument`, so the sender sees the reason instead of a silent misreading).  Fields are added,
never renamed, so a newer node can still read an older one's messages.

Message flow (I = the job's initiator, P = a participant; arrows are HTTP POSTs through the gateways)::

    I -> P  JobProposal        the job spec + the initiator's uid     -> ProposalReply (accept / refuse)
    P -> I  PartyJobReport     P's approval decision                  -> Ack
    I -> P  JobSync            the job's phase, stage, approvals ...  -> JobSyncReply (P's approval)
    * -> I  JobCommandRequest  stop / suspend / restart / cancel / delete, issued at any party
                                                                      -> JobCommandReply
    I -> P  JobDelete          the job was deleted at the initiator   -> Ack
    I -> P  TaskPrepare        reserve ports, register services       -> PartyReply (P's party status)
    I -> P  TaskStart          launch the engine                      -> PartyReply
    I -> P  TaskRelease        the task ended: stop, unregister, free -> PartyReply
    P -> I  PartyTaskReport    P's party status changed               -> Ack

**Idempotency.**  Each message names its object by name *and* the uid the initiator's store gave it,
so a job deleted and re-created under the same name is never confused with the old one.  Receivers
apply state, not events: a party phase only moves forward (Pending < Preparing < Running < final), an
approval only leaves Pending once, a stage command only replaces an older `version`, a JobSync only
replaces an older `revision`.  Sending the same message twice, or an old one late, changes nothing.

**Retries.**  Senders are reconcilers that derive what to send from the store: a message is due while
the digest (`digest()`) of the state it carries differs from the digest the peer last acknowledged
(kept in `status.sync[peer]`).  A lost reply is therefore simply re-sent; a restarted node re-sends
whatever was not acknowledged before it went down.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from accord.resources.job import JobSpec, PartyStatus, StageCommand, TaskSpec
from accord.resources.phases import ApprovalState, JobPhase, TaskPhase

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})

# Annotations and labels the protocol writes on mirrored objects (participants' copies).
ORIGIN_UID = "accord/origin-uid"
"""Annotation: the uid of the object in the initiator's store (the incarnation a mirror belongs to)."""
ORIGIN_REVISION = "accord/origin-revision"
"""Annotation: the initiator's resource_version of the last JobSync applied to a mirror."""
INITIATOR_LABEL = "accord/initiator"
STAGE_VERSION_LABEL = "accord/stage-version"
"""Label on a Task: the job's stage version when it was created (a restart replaces older failed ones)."""


class JobCommand(StrEnum):
    """Commands any party may issue; the initiator applies them and tells everyone."""

    STOP = "Stop"
    SUSPEND = "Suspend"
    RESTART = "Restart"
    CANCEL = "Cancel"
    DELETE = "Delete"


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = PROTOCOL_VERSION

    @field_validator("v")
    @classmethod
    def _supported(cls, v: int) -> int:
        if v not in SUPPORTED_VERSIONS:
            raise ValueError(
                f"protocol version {v} is not supported by this node "
                f"(it speaks {', '.join(str(s) for s in sorted(SUPPORTED_VERSIONS))})"
            )
        return v


class Ack(Message):
    ok: bool = True


# -- jobs ---------------------------------------------------------------------------------------------


class JobProposal(Message):
    job: str
    job_uid: str
    spec: JobSpec


class ProposalReply(Message):
    accepted: bool
    approval: ApprovalState = ApprovalState.PENDING
    reason: str = ""


class JobState(BaseModel):
    """The part of the initiator's job status every participant mirrors."""

    model_config = ConfigDict(extra="forbid")

    phase: JobPhase
    reason: str = ""
    message: str = ""
    approve_status: dict[str, ApprovalState] = Field(default_factory=dict)
    approve_messages: dict[str, str] = Field(default_factory=dict)
    stage: StageCommand = Field(default_factory=StageCommand)
    task_status: dict[str, TaskPhase] = Field(default_factory=dict)
    task_messages: dict[str, str] = Field(default_factory=dict)
    start_time: datetime | None = None
    completion_time: datetime | None = None


class JobSync(Message):
    job: str
    job_uid: str
    revision: int = Field(ge=0, description="the initiator's resource_version; older syncs are ignored")
    state: JobState


class JobSyncReply(Message):
    approval: ApprovalState = ApprovalState.PENDING
    reason: str = ""


class PartyJobReport(Message):
    job: str
    job_uid: str
    approval: ApprovalState
    reason: str = ""


class JobCommandRequest(Message):
    job: str
    command: JobCommand
    reason: str = Field("", max_length=1000)


class JobCommandReply(Message):
    phase: JobPhase
    stage: StageCommand
    message: str = ""


class JobDelete(Message):
    job: str
    job_uid: str


# -- tasks --------------------------------------------------------------------------------------------


class TaskPrepare(Message):
    job: str
    job_uid: str
    task: str
    task_uid: str
    spec: TaskSpec
    stage_version: int = 0


class TaskStart(Message):
    task: str
    task_uid: str


class TaskRelease(Message):
    task: str
    task_uid: str
    phase: TaskPhase
    message: str = ""
    parties: list[PartyStatus] = Field(default_factory=list)


class PartyReply(Message):
    party: PartyStatus


class PartyTaskReport(Message):
    task: str
    task_uid: str
    party: PartyStatus


def digest(payload: BaseModel) -> str:
    """A short stable fingerprint of a state, to tell whether a peer acknowledged exactly this state."""
    return hashlib.sha256(payload.model_dump_json().encode()).hexdigest()[:24]
