"""VideoConfig: the sparse-tube video encoder's settings (`video.*`), validated on construction.

Kept apart from `video.py` (torch, timm) so that the typed suite config can import it cheaply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ENCODINGS = ("tubes", "per_frame")
# TubeViT's tubes for 32 frames at 224 px, patch 16: "kernel stride offset", each as T x H x W
TUBEVIT_TUBES = ["8x8x8 16x32x32 0x0x0", "16x4x4 6x32x32 4x8x8", "4x12x12 16x32x32 0x16x16"]
_SPEC = re.compile(r"^\s*(\d+)x(\d+)x(\d+)\s+(\d+)x(\d+)x(\d+)(?:\s+(\d+)x(\d+)x(\d+))?\s*$")


@dataclass(frozen=True)
class TubeSpec:
    kernel: tuple[int, int, int]  # (kt, kh, kw) frames, pixels, pixels
    stride: tuple[int, int, int]
    offset: tuple[int, int, int] = (0, 0, 0)  # where the first tube starts

    @classmethod
    def parse(cls, text: str) -> TubeSpec:
        """'8x8x8 16x32x32 [0x0x0]' -> kernel, stride, offset (T x H x W)."""
        m = _SPEC.match(str(text))
        if not m or any(int(v) == 0 for v in m.groups()[:6]):
            raise ValueError(f"video.tube_specs: {text!r}: expected 'KTxKHxKW STxSHxSW [OTxOHxOW]' with "
                             "positive kernel and stride, e.g. '8x8x8 16x32x32 0x0x0'")
        g = [int(v or 0) for v in m.groups()]
        return cls(tuple(g[0:3]), tuple(g[3:6]), tuple(g[6:9]))  # type: ignore[arg-type]

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Tubes along (t, h, w); 0 along an axis the kernel does not fit in."""
        sizes = (frames, height, width)
        return tuple(max(0, (n - o - k) // s + 1) if n - o >= k else 0
                     for n, k, s, o in zip(sizes, self.kernel, self.stride, self.offset))  # type: ignore[return-value]


@dataclass
class VideoConfig:
    encoding: str = "tubes"  # "tubes": one ViT pass over sparse tubes + frames; "per_frame": the baseline
    tubes: bool = True  # False = sparse 2D frames only (the "no tube inputs" ablation)
    fixed_pos_embed: bool = True  # 3D sin-cos positions on every video token
    gated_connection: bool = True  # sin-cos joined to the learned positions through tanh(gate), gate = 0 at init
    # 2D patches of frames frame_offset, frame_offset + frame_stride, ...; 32 = TubeViT's main setting,
    # one 2D frame per 32-frame clip (its 1x16x16 kernel with temporal stride 32)
    frame_stride: int = 32
    frame_offset: int = 0
    tube_specs: list[str] = field(default_factory=lambda: list(TUBEVIT_TUBES))

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"video.encoding={self.encoding!r}: must be one of {ENCODINGS}")
        if self.frame_stride < 1:
            raise ValueError(f"video.frame_stride={self.frame_stride}: must be >= 1")
        if self.frame_offset < 0:
            raise ValueError(f"video.frame_offset={self.frame_offset}: must be >= 0")
        for text in self.tube_specs:  # parses, naming the bad entry
            TubeSpec.parse(text)

    @property
    def specs(self) -> list[TubeSpec]:
        """The tubes in use: none for the frames-only ablation or the per-frame baseline."""
        on = self.tubes and self.encoding == "tubes"
        return [TubeSpec.parse(s) for s in self.tube_specs] if on else []

    def frame_indices(self, frames: int) -> list[int]:
        return list(range(self.frame_offset, frames, self.frame_stride))

    def check_clip(self, frames: int, image_size: int, patch_size: int) -> None:
        """Every tube and the 2D path must yield tokens for clips of this size."""
        if self.encoding == "tubes" and not self.frame_indices(frames):
            raise ValueError(f"video.frame_offset={self.frame_offset}: no 2D frame in a {frames}-frame clip")
        for text, spec in zip(self.tube_specs if self.specs else [], self.specs):
            if 0 in spec.grid(frames, image_size, image_size):
                raise ValueError(f"video.tube_specs: {text!r} yields no tube for {frames} frames of "
                                 f"{image_size} px (kernel + offset larger than the clip)")
