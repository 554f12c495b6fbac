"""Video decoding with PyAV: T frames sampled from a file, the clip transform, and the clip reader.

Clips: T frames (video.num_frames) sampled at video.fps (0 = spread over the whole video),
"uniform" (segment centres; evaluation always) or "random" (a random window start and a
random point in each segment; training), decoded with PyAV in the DataLoader workers,
resized / cropped on the fly (the same crop for every frame of a clip). A file that cannot be
decoded raises `VideoError` naming it; `ClipReader.clip` logs it and returns None.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from mammut_pl.data.epochs import SampleRef
from mammut_pl.data.transforms import MEAN, STD
from mammut_pl.resume import seeded

log = logging.getLogger(__name__)


class VideoError(ValueError):
    """A video file that cannot be decoded into frames (names the file)."""


def sample_times(duration: float, num_frames: int, fps: float, random: bool,
                 generator: torch.Generator | None = None) -> list[float]:
    """Timestamps (s) of T frames: a window of T / fps seconds (the whole video if fps = 0 or the
    video is shorter), centred (uniform) or at a random start (random), T equal segments,
    each segment's centre (uniform) or a random point in it (random)."""
    window = duration if fps <= 0 else min(duration, num_frames / fps)
    u = torch.rand(num_frames + 1, generator=generator).tolist() if random else [0.5] * (num_frames + 1)
    start = (duration - window) * u[-1]
    seg = window / num_frames
    return [start + (i + u[i]) * seg for i in range(num_frames)]


def read_video(path: str, num_frames: int, fps: float = 0.0, random: bool = False,
               generator: torch.Generator | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames nearest to `sample_times`; raises VideoError naming the file."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"cannot decode video {path}: no video stream")
            stream = container.streams.video[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / av.time_base
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            if not duration or duration <= 0:  # unknown length: decode everything first
                frames, times, length = decode_all(path)
                return pick_frames(frames, times, sample_times(length, num_frames, fps, random, generator))
            targets = sample_times(duration, num_frames, fps, random, generator)
            order = sorted(range(num_frames), key=lambda i: targets[i])
            out: list[np.ndarray | None] = [None] * num_frames
            k, prev, prev_t, n = 0, None, 0.0, 0
            cache: dict[int, np.ndarray] = {}

            def pixels(frame) -> np.ndarray:
                if id(frame) not in cache:
                    cache.clear()  # frames arrive in order: only the latest two are ever reused
                    cache[id(frame)] = frame.to_ndarray(format="rgb24")
                return cache[id(frame)]

            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else n / rate
                n += 1
                while k < num_frames and t >= targets[order[k]]:
                    tau = targets[order[k]]
                    pick = prev if prev is not None and tau - prev_t <= t - tau else frame
                    out[order[k]] = pixels(pick)
                    k += 1
                if k == num_frames:
                    break
                prev, prev_t = frame, t
            if prev is None and k == 0:
                raise VideoError(f"cannot decode video {path}: no frames")
            if k < num_frames:  # targets after the last frame
                if duration - prev_t > max(1.0, 0.25 * duration):
                    raise VideoError(f"cannot decode video {path}: truncated (frames end at {prev_t:.2f} s "
                                     f"of {duration:.2f} s)")
                last = pixels(prev)
                for i in order[k:]:
                    out[i] = last
            return np.stack(out)  # type: ignore[arg-type]
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError, RuntimeError, MemoryError) as err:
        raise VideoError(f"cannot decode video {path}: {err}") from None


def decode_all(path: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Every frame of a (short) video: (N, H, W, 3) uint8, their times (N,) and the duration (s)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"cannot decode video {path}: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            frames, times = [], []
            for frame in container.decode(stream):
                times.append(float(frame.time) if frame.time is not None else len(frames) / rate)
                frames.append(frame.to_ndarray(format="rgb24"))
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError, RuntimeError, MemoryError) as err:
        raise VideoError(f"cannot decode video {path}: {err}") from None
    if not frames:
        raise VideoError(f"cannot decode video {path}: no frames")
    end = times[-1] + 1 / rate
    if duration and duration - times[-1] > max(1.0, 0.25 * duration):
        raise VideoError(f"cannot decode video {path}: truncated (frames end at {times[-1]:.2f} s of {duration:.2f} s)")
    return np.stack(frames), np.asarray(times), duration or end


def pick_frames(frames: np.ndarray, times: np.ndarray, targets: list[float]) -> np.ndarray:
    """The frame nearest to each target time (ties: the earlier frame), as `read_video` picks them."""
    idx = np.searchsorted(times, targets, side="left")  # the first frame at or after the target
    after = np.clip(idx, 0, len(times) - 1)
    before = np.clip(idx - 1, 0, len(times) - 1)
    t = np.asarray(targets)
    use_before = (idx > 0) & (((t - times[before]) <= (times[after] - t)) | (idx >= len(times)))
    return frames[np.where(use_before, before, after)]


class ClipTransform:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float, CLIP-normalised. Training with augment:
    one random resized crop for the whole clip; otherwise resize the short side + centre crop."""

    def __init__(self, size: int, train: bool, augment: bool = True, crop_scale_min: float = 0.8) -> None:
        self.size, self.random = size, train and augment
        self.scale_min = crop_scale_min
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(STD).view(1, 3, 1, 1)

    def crop_box(self, h: int, w: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        if not self.random:
            s = min(h, w)
            return (h - s) // 2, (w - s) // 2, s, s
        r = torch.rand(4, generator=generator).tolist()
        area = h * w * (self.scale_min + (1 - self.scale_min) * r[0])
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r[1])
        cw = min(w, max(1, round(math.sqrt(area * ratio))))
        ch = min(h, max(1, round(math.sqrt(area / ratio))))
        return int((h - ch) * r[2]), int((w - cw) * r[3]), ch, cw

    def __call__(self, frames: np.ndarray, generator: torch.Generator | None = None) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
        top, left, ch, cw = self.crop_box(x.shape[2], x.shape[3], generator)
        x = x[:, :, top: top + ch, left: left + cw]
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0, 1)
        return (x - self.mean) / self.std




# --- clips of files --------------------------------------------------------------------------------
class ClipReader(Dataset):
    """Clips of video files: decode (PyAV, or a per-worker cache of every frame), sample T frames,
    transform. The MSRVTT datasets subclass it; `eval_clip_reader` is evaluation's instance."""


    def __init__(self, transform: ClipTransform, num_frames: int, fps: float, random: bool,
                 cache: bool = False) -> None:
        self.transform, self.num_frames, self.fps, self.random = transform, num_frames, fps, random
        # cache: every decoded frame of every video, per worker (small demo clips only: frames
        # are then sampled from memory, the same frames `read_video` would pick)
        self.cache: dict[str, tuple[np.ndarray, np.ndarray, float] | VideoError] | None = {} if cache else None

    def frames(self, path: str) -> np.ndarray:
        if self.cache is None:
            return read_video(path, self.num_frames, self.fps, self.random)
        if path not in self.cache:
            try:
                self.cache[path] = decode_all(path)
            except VideoError as err:
                self.cache[path] = err
        entry = self.cache[path]
        if isinstance(entry, VideoError):
            raise entry
        frames, times, duration = entry
        return pick_frames(frames, times, sample_times(duration, self.num_frames, self.fps, self.random))

    def positioned_clip(self, i: int | SampleRef, path: str) -> tuple[Tensor | None, dict[str, Any]]:
        """(clip, extra item fields): in training (a SampleRef) the frame sampling and the crop
        are drawn from the item's own seed and the item carries its place in the epoch."""
        if not isinstance(i, SampleRef):
            return self.clip(path), {}
        with seeded(i.seed):
            return self.clip(path), {"position": (i.epoch, i.position)}

    def load(self, path: str) -> Tensor:
        """The clip (T, 3, S, S); raises VideoError naming the file."""
        return self.transform(self.frames(path))

    def clip(self, path: str) -> Tensor | None:
        """The clip, or None (logged) when the video cannot be decoded: the collator counts it."""
        try:
            return self.load(path)
        except VideoError as err:
            log.warning("skipping: %s", err)
            return None


def eval_clip_reader(image_size: int, num_frames: int, fps: float) -> ClipReader:
    """Evaluation's clip path on its own (uniform sampling at segment centres, resize + centre
    crop): `reader.load(path)` is the clip val / test feed the model, for any video file
    (`python -m mammut_pl.predict video=`)."""
    return ClipReader(ClipTransform(image_size, train=False), num_frames, fps, random=False)
