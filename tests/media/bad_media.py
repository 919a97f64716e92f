"""Broken media files for the tests: garbage named .mp4, and a real mp4 cut short."""

from pathlib import Path

import av


def garbage(path: str | Path) -> Path:
    """A text file named like a clip."""
    path = Path(path)
    path.write_text("these are meeting notes, not a video\n" * 20)
    return path


def truncated(src: str | Path, dst: str | Path, keep: float = 0.6) -> Path:
    """`src` remuxed with its index first (mp4 "faststart", as streamed downloads are), then cut
    to `keep` of its bytes: the file opens and its headers give the whole duration, but the end of
    its data is missing. `dst` may be `src`."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(dst.stem + ".faststart.mp4")
    with av.open(str(src)) as inp, av.open(str(tmp), "w", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    data = tmp.read_bytes()
    tmp.unlink()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst
