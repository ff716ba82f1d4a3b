"""A server-sent-events parser, fed line by line (the WHATWG rules that
rollcall's server uses): ``id:``, ``event:``, ``data:``, comments, blank line
ends a message."""

from __future__ import annotations

from typing import List, NamedTuple, Optional


class Message(NamedTuple):
    id: Optional[str]
    event: Optional[str]
    data: str


class Parser:
    def __init__(self) -> None:
        self._id: Optional[str] = None
        self._event: Optional[str] = None
        self._data: List[str] = []

    def feed(self, line: str) -> Optional[Message]:
        """Takes one line (without its end); returns a message when the line ends one."""
        if line == "":
            message = None
            if self._data:
                message = Message(self._id, self._event, "\n".join(self._data))
            self._event = None
            self._data = []
            return message
        if line.startswith(":"):
            return None  # keep-alive comment
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "id":
            self._id = value
        elif field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None
