from __future__ import annotations

import flatbuffers
import numpy as np

import typing

uoffset: typing.TypeAlias = flatbuffers.number_types.UOffsetTFlags.py_type

class Cursor(object):
  @classmethod
  def SizeOf(cls) -> int: ...

  def Init(self, buf: bytes, pos: int) -> None: ...
  def ChatId(self) -> int: ...
  def Seq(self) -> int: ...

def CreateCursor(builder: flatbuffers.Builder, chatId: int, seq: int) -> uoffset: ...

