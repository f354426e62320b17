from __future__ import annotations

import flatbuffers
import numpy as np

import typing
from typing import cast

uoffset: typing.TypeAlias = flatbuffers.number_types.UOffsetTFlags.py_type

class Body(object):
  NONE = cast(int, ...)
  Hello = cast(int, ...)
  Welcome = cast(int, ...)
  Send = cast(int, ...)
  SendOk = cast(int, ...)
  Message = cast(int, ...)
  Sync = cast(int, ...)
  SyncDone = cast(int, ...)
  History = cast(int, ...)
  HistoryPage = cast(int, ...)
  Ack = cast(int, ...)
  Presence = cast(int, ...)
  Ping = cast(int, ...)
  Pong = cast(int, ...)
  Error = cast(int, ...)
  Resync = cast(int, ...)
  Edit = cast(int, ...)
  Delete = cast(int, ...)
  Typing = cast(int, ...)
  Receipt = cast(int, ...)
  ChatStates = cast(int, ...)

