"""The admin API as every side uses it: the wire types, the client, finding a server and its token, and
how its amounts of money read (`money`).

Imports neither Starlette nor Textual: the server encodes with these types, and the control panel, the
owner's commands, the benchmarks and the tests decode with them.
"""

from avatargen.api.client import AdminClient, AdminError, AuthError, Unreachable
from avatargen.api.discovery import TokenError, find_token, server_url
from avatargen.api.money import money
from avatargen.api.wire import (
    STATES,
    BucketLevel,
    BucketsChange,
    Cost,
    DayTotal,
    History,
    ImageApproved,
    ImageEvent,
    ImageHeld,
    ImageInfo,
    ImageKept,
    ImageMoved,
    ImageRemoved,
    LastRun,
    LogEntry,
    NewImage,
    Preview,
    ProtocolError,
    RunChart,
    RunMinute,
    RunView,
    ServerEvent,
    State,
    StateChange,
    Status,
    Step,
    VisitorErrors,
    decode_event,
    encode_event,
)

__all__ = [
    "STATES", "AdminClient", "AdminError", "AuthError", "BucketLevel", "BucketsChange", "Cost", "DayTotal",
    "History", "ImageApproved", "ImageEvent", "ImageHeld", "ImageInfo", "ImageKept", "ImageMoved", "ImageRemoved",
    "LastRun", "LogEntry", "NewImage", "Preview", "ProtocolError", "RunChart", "RunMinute", "RunView",
    "ServerEvent", "State", "StateChange", "Status", "Step", "TokenError", "Unreachable", "VisitorErrors",
    "decode_event", "encode_event", "find_token", "money", "server_url",
]
