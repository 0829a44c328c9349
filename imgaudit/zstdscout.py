"""Where zstd blocks start, read from frame and block headers ahead of the decoder (RFC 8878 §3.1).

No zstd block decodes to more than 128 KiB (Block_Maximum_Size), so input fed to the decoder a whole
number of blocks at a time bounds one call's output without capping the decoder itself, which
zstandard's decompressobj cannot do. That lets the layer scan feed zstd many blocks per call instead
of 1 KiB slices (740k calls for the benchmark image). The scout only sizes slices: whatever it cannot
read (garbage, a reserved block type, trailing data) makes it give up, the scan falls back to small
slices, and libzstd alone judges the bytes.
"""

from __future__ import annotations

from collections import deque

BLOCK_MAX = 128 << 10
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_FCS_SIZES = (0, 2, 4, 8)
_DID_SIZES = (0, 1, 2, 4)


class ZstdScout:
    """Follows a zstd stream fed in order (`feed`) and answers `end_for`: how far a slice may reach."""

    def __init__(self) -> None:
        self.lost = False
        self._pos = 0  # absolute offset of the next header to read
        self._what = "frame"  # what starts at _pos: "frame", "block", "skip-size"
        self._checksum = False  # the current frame ends in a 4-byte checksum
        self._carry = b""  # the start of a header cut by a chunk's end
        self._fed = 0  # absolute offset just after the bytes fed so far
        self.starts: deque[int] = deque()  # offsets where blocks (or frames) start, not yet passed

    def feed(self, data: bytes | memoryview) -> None:
        base, self._fed = self._fed, self._fed + len(data)
        while not self.lost and self._pos < self._fed:
            rel = self._pos - base
            # rel < 0: the header began in the last chunk, whose part of it is in _carry
            view = self._carry + bytes(data[:32]) if rel < 0 else bytes(data[rel:rel + 32])
            step = self._read(view)
            if step is None:  # the header is cut by the chunk's end: keep its start for the next one
                self._carry = view if rel < 0 else bytes(data[rel:])
                return
            self._carry = b""
            self._pos += step

    def _read(self, head: bytes) -> int | None:
        """Reads the header at _pos from `head`; returns how far the next header is, None when cut."""
        if self._what == "frame":
            if len(head) < 4:
                return None
            if head[:4] == ZSTD_MAGIC:
                if len(head) < 6:
                    return None
                fhd = head[4]
                single, self._checksum = bool(fhd & 0x20), bool(fhd & 0x04)
                if fhd & 0x08:  # the reserved bit: libzstd refuses the frame
                    self.lost = True
                    return 0
                fcs = _FCS_SIZES[fhd >> 6] or (1 if single else 0)
                self.starts.append(self._pos)
                self._what = "block"
                return 5 + (0 if single else 1) + _DID_SIZES[fhd & 3] + fcs
            if 0x50 <= head[0] <= 0x5F and head[1:4] == b"\x2a\x4d\x18":  # skippable frame
                self._what = "skip-size"
                return 4
            self.lost = True  # trailing data or garbage
            return 0
        if self._what == "skip-size":
            if len(head) < 4:
                return None
            self._what = "frame"
            return 4 + int.from_bytes(head[:4], "little")
        if len(head) < 3:
            return None
        value = int.from_bytes(head[:3], "little")
        last, kind, size = value & 1, (value >> 1) & 3, value >> 3
        if kind == 3 or size > BLOCK_MAX:
            self.lost = True
            return 0
        self.starts.append(self._pos)
        if last:
            self._what = "frame"
            return 3 + (1 if kind == 1 else size) + (4 if self._checksum else 0)
        return 3 + (1 if kind == 1 else size)

    def end_for(self, start: int, available: int, blocks: int) -> int | None:
        """The end (absolute) of a slice from `start` that begins at most `blocks` blocks, so one call
        decodes at most (blocks + 1) × 128 KiB; `available` is where the fed bytes end. None: lost."""
        if self.lost:
            return None
        while self.starts and self.starts[0] < start:
            self.starts.popleft()
        if len(self.starts) > blocks:
            return max(self.starts[blocks], start + 1)
        return available
