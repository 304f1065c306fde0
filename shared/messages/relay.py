"""The relay's frames: shells, copies and forwarded ports between `suanli`, the coordinator and
the agent that runs the job, over WebSockets (binary messages, one msgpack frame each).

The agent's one channel carries many sessions, each frame naming its session; the client's
WebSocket carries one session and names it 0. Flow control is by credit: a side may have at
most `WINDOW` data bytes of a session in flight, and the receiver returns credit (`Ack`) as it
delivers them, so nobody buffers more than a window for a slow reader.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

MAX_DATA = 64 * 1024  # payload bytes of one Data frame
MAX_FRAME = MAX_DATA + 1024  # a whole encoded frame, as a WebSocket message
WINDOW = 1 << 20  # data bytes of one session in flight, each way
MAX_ARGV = 256
MAX_ARG = 4096
CLIENT_SESSION = 0

Session = Annotated[int, msgspec.Meta(ge=0, le=2**31)]
Lease = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Arg = Annotated[str, msgspec.Meta(max_length=MAX_ARG)]
Size = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65_535)]
Credit = Annotated[int, msgspec.Meta(ge=1, le=WINDOW)]
Reason = Annotated[str, msgspec.Meta(max_length=500)]
ExitCode = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31)]
Stream = Literal[0, 1, 2]
STDIN: Stream = 0
STDOUT: Stream = 1
STDERR: Stream = 2


class Frame(msgspec.Struct, array_like=True, tag=True, tag_field="t"):
    """Base of the relay's frames (tagged by their class name)."""

    session: Session


class Open(Frame, tag="open"):
    """Coordinator → agent: start a session in the lease's container; `kind` exec runs `argv`
    (with a terminal of `rows` × `cols` when `tty`), `kind` port connects to the job's own
    127.0.0.1:`port`."""

    lease_id: Lease
    kind: Literal["exec", "port"]
    argv: Annotated[list[Arg], msgspec.Meta(max_length=MAX_ARGV)] = []
    tty: bool = False
    stdin: bool = False
    rows: Size = 24
    cols: Size = 80
    port: Port | None = None


class Data(Frame, tag="data"):
    """Bytes of a session: the client's stdin (stream 0), the command's stdout (1) or stderr (2),
    or a forwarded connection's bytes either way (stream 1)."""

    data: Annotated[bytes, msgspec.Meta(max_length=MAX_DATA)]
    stream: Stream = STDOUT


class Ack(Frame, tag="ack"):
    """Credit back: this many data bytes of the session were delivered onward."""

    size: Credit


class Resize(Frame, tag="resize"):
    rows: Size
    cols: Size


class Eof(Frame, tag="eof"):
    """The sender has no more input for the session (the client's stdin closed)."""


class Exit(Frame, tag="exit"):
    """The command ended with this exit code; the session closes after it."""

    code: ExitCode


class Close(Frame, tag="close"):
    """The session is over; `reason` says why when it did not simply end."""

    reason: Reason = ""


AnyFrame = Open | Data | Ack | Resize | Eof | Exit | Close
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyFrame)


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode(message: bytes) -> AnyFrame:
    """A frame from one WebSocket message; raises msgspec.ValidationError (or DecodeError),
    naming the field, for anything malformed or too large."""
    if len(message) > MAX_FRAME:
        raise msgspec.ValidationError(f"a relay frame is at most {MAX_FRAME} bytes")
    return _decoder.decode(message)


def chunks(data: bytes) -> list[bytes]:
    """`data` cut into Data-sized pieces."""
    return [data[i : i + MAX_DATA] for i in range(0, len(data), MAX_DATA)] or [b""]
