from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    SEARCH: _ClassVar[EventType]
    REC: _ClassVar[EventType]
    IMPRESSION: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
SEARCH: EventType
REC: EventType
IMPRESSION: EventType

class RankRequest(_message.Message):
    __slots__ = ("user_id", "query", "candidate_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    query: str
    candidate_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, user_id: _Optional[str] = ..., query: _Optional[str] = ..., candidate_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("item_ids", "scores", "arm", "model_version", "request_id")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    arm: str
    model_version: str
    request_id: str
    def __init__(self, item_ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., arm: _Optional[str] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "user_id", "item_id", "query", "type", "clicked", "timestamp_ms", "request_id", "position")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CLICKED_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: int
    item_id: int
    query: str
    type: EventType
    clicked: bool
    timestamp_ms: int
    request_id: str
    position: int
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[int] = ..., item_id: _Optional[int] = ..., query: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., clicked: _Optional[bool] = ..., timestamp_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class RecordRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class RecordResponse(_message.Message):
    __slots__ = ("seqs", "stored", "duplicates")
    SEQS_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    seqs: _containers.RepeatedScalarFieldContainer[int]
    stored: int
    duplicates: int
    def __init__(self, seqs: _Optional[_Iterable[int]] = ..., stored: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...
