from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ActRequest(_message.Message):
    __slots__ = ("policy", "version", "observations", "sample", "seed")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    policy: str
    version: int
    observations: Tensor
    sample: bool
    seed: int
    def __init__(self, policy: _Optional[str] = ..., version: _Optional[int] = ..., observations: _Optional[_Union[Tensor, _Mapping]] = ..., sample: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class ActResponse(_message.Message):
    __slots__ = ("actions", "policy", "version")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    actions: Tensor
    policy: str
    version: int
    def __init__(self, actions: _Optional[_Union[Tensor, _Mapping]] = ..., policy: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[PolicyInfo]
    def __init__(self, policies: _Optional[_Iterable[_Union[PolicyInfo, _Mapping]]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("policy", "version")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    policy: str
    version: int
    def __init__(self, policy: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: PolicyInfo
    def __init__(self, policy: _Optional[_Union[PolicyInfo, _Mapping]] = ...) -> None: ...

class AuditInfo(_message.Message):
    __slots__ = ("verdict", "audit_json")
    class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        VERDICT_UNSPECIFIED: _ClassVar[AuditInfo.Verdict]
        NOT_AUDITED: _ClassVar[AuditInfo.Verdict]
        PASS: _ClassVar[AuditInfo.Verdict]
        FAIL: _ClassVar[AuditInfo.Verdict]
    VERDICT_UNSPECIFIED: AuditInfo.Verdict
    NOT_AUDITED: AuditInfo.Verdict
    PASS: AuditInfo.Verdict
    FAIL: AuditInfo.Verdict
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_JSON_FIELD_NUMBER: _ClassVar[int]
    verdict: AuditInfo.Verdict
    audit_json: str
    def __init__(self, verdict: _Optional[_Union[AuditInfo.Verdict, str]] = ..., audit_json: _Optional[str] = ...) -> None: ...

class PolicyInfo(_message.Message):
    __slots__ = ("name", "version", "versions", "serving_version", "task", "env_id", "algorithm", "obs_dim", "action_dim", "action_low", "action_high", "cost_limit", "metadata_json", "audit", "execution_providers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    OBS_DIM_FIELD_NUMBER: _ClassVar[int]
    ACTION_DIM_FIELD_NUMBER: _ClassVar[int]
    ACTION_LOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_HIGH_FIELD_NUMBER: _ClassVar[int]
    COST_LIMIT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    versions: _containers.RepeatedScalarFieldContainer[int]
    serving_version: int
    task: str
    env_id: str
    algorithm: str
    obs_dim: int
    action_dim: int
    action_low: _containers.RepeatedScalarFieldContainer[float]
    action_high: _containers.RepeatedScalarFieldContainer[float]
    cost_limit: float
    metadata_json: str
    audit: AuditInfo
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., versions: _Optional[_Iterable[int]] = ..., serving_version: _Optional[int] = ..., task: _Optional[str] = ..., env_id: _Optional[str] = ..., algorithm: _Optional[str] = ..., obs_dim: _Optional[int] = ..., action_dim: _Optional[int] = ..., action_low: _Optional[_Iterable[float]] = ..., action_high: _Optional[_Iterable[float]] = ..., cost_limit: _Optional[float] = ..., metadata_json: _Optional[str] = ..., audit: _Optional[_Union[AuditInfo, _Mapping]] = ..., execution_providers: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("policy", "version", "granularity", "episode_id", "reward", "cost", "steps", "done")
    class Granularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        GRANULARITY_UNSPECIFIED: _ClassVar[ReportOutcomeRequest.Granularity]
        STEP: _ClassVar[ReportOutcomeRequest.Granularity]
        EPISODE: _ClassVar[ReportOutcomeRequest.Granularity]
    GRANULARITY_UNSPECIFIED: ReportOutcomeRequest.Granularity
    STEP: ReportOutcomeRequest.Granularity
    EPISODE: ReportOutcomeRequest.Granularity
    POLICY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    policy: str
    version: int
    granularity: ReportOutcomeRequest.Granularity
    episode_id: str
    reward: float
    cost: float
    steps: int
    done: bool
    def __init__(self, policy: _Optional[str] = ..., version: _Optional[int] = ..., granularity: _Optional[_Union[ReportOutcomeRequest.Granularity, str]] = ..., episode_id: _Optional[str] = ..., reward: _Optional[float] = ..., cost: _Optional[float] = ..., steps: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ("episode_cost", "violation", "episode_done")
    EPISODE_COST_FIELD_NUMBER: _ClassVar[int]
    VIOLATION_FIELD_NUMBER: _ClassVar[int]
    EPISODE_DONE_FIELD_NUMBER: _ClassVar[int]
    episode_cost: float
    violation: bool
    episode_done: bool
    def __init__(self, episode_cost: _Optional[float] = ..., violation: _Optional[bool] = ..., episode_done: _Optional[bool] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("loaded", "unloaded", "failed")
    LOADED_FIELD_NUMBER: _ClassVar[int]
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    loaded: _containers.RepeatedScalarFieldContainer[str]
    unloaded: _containers.RepeatedScalarFieldContainer[str]
    failed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, loaded: _Optional[_Iterable[str]] = ..., unloaded: _Optional[_Iterable[str]] = ..., failed: _Optional[_Iterable[str]] = ...) -> None: ...
