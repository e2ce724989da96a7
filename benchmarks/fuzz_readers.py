"""Feed damaged splat files and checkpoints to every splatkit reader; prints JSON counts.

    python benchmarks/fuzz_readers.py                    # 1,000 damaged files per format
    python benchmarks/fuzz_readers.py --per-format 200   # a quicker pass

A small random model (300 Gaussians, SH degree 3, so a compressed PLY has two chunks) is
written in every format splatkit reads (``.ply``, ``.splat``, ``.spz`` versions 3, 2 and 4,
``.compressed.ply``, ``.ksplat`` and ``.sog``)
and as a checkpoint. Each file is damaged in one of these ways, drawn
at random (seeded): bits flipped, a run of bytes overwritten or zeroed, cut at a random
length, random bytes appended, a number of a PLY header replaced (by 0, -1, 2**31, ...),
a field of an ``.spz``'s inflated header or body changed and the stream gzipped again, a
checkpoint's content changed and saved again with a valid checksum (NaN, wrong shapes,
missing keys). Every damaged file is read with :func:`splatkit.splat.formats.read_splat`
(the reader ``splatkit info/export/view/eval`` use; it dispatches on the suffix, and for
``.ckpt`` to the checkpoint reader) in a worker process with a per-read timeout and a
memory limit. Each read ends as one of:

- ``clean_error``: a :class:`~splatkit.errors.SplatFileError` naming the file;
- ``other_exception``: any other exception (a crash for a user: a traceback);
- ``hang``: no answer within ``--timeout`` seconds (the worker is killed and replaced);
- ``garbage_accepted``: the read succeeded, but the model holds NaN or Inf, or it is a
  checkpoint (which carries a checksum) whose content differs from the source's;
- ``accepted_identical``: read, and equal to the source model (the damage hit bytes the
  format ignores, such as a PLY comment);
- ``accepted_different``: read, finite, but different: damage inside raw payload bytes of
  a format without a checksum (PLY, .splat, compressed PLY; .spz has only gzip's CRC of the
  compressed stream) cannot be told from a genuine file; counted, not a failure.

Everything but ``clean_error`` and the two ``accepted_*`` counts must be 0.

SIGKILLs during exports are ``benchmarks/kill_exports.py``'s.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import random
import re
import struct
import sys
import tempfile
from pathlib import Path

import torch

CATEGORIES = ("clean_error", "other_exception", "hang", "garbage_accepted", "accepted_identical", "accepted_different")
SOURCES = {  # name -> (file name, format name or "ckpt", extra writer arguments)
    "ply": "model.ply",
    "splat": "model.splat",
    "spz": "model.spz",
    "spz_v2": "model_v2.spz",
    "spz_v4": "model_v4.spz",
    "compressed_ply": "model.compressed.ply",
    "ksplat": "model.ksplat",
    "sog": "model.sog",
    "checkpoint": "model.ckpt",
}


def source_model(n: int = 300, seed: int = 0):
    from splatkit.splat.model import SplatModel

    g = torch.Generator().manual_seed(seed)
    return SplatModel(
        means=torch.randn(n, 3, generator=g),
        scales=torch.rand(n, 3, generator=g) * 3 - 5,
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g) * 0.5,
        shN=torch.randn(n, 15, 3, generator=g) * 0.2,
    )


def checkpoint_content(model) -> dict:
    """What a trainer's checkpoint holds, with the model's parameters (no optimiser moments)."""
    return {
        "step": 7,
        "training_state": {"params": {k: v.clone() for k, v in model.params().items()}},
        "densification": {},
        "modules": [],
        "data_provider": {},
        "config": {"max_steps": 7},
        "rng": {"torch": torch.get_rng_state()},
    }


def write_sources(folder: Path) -> dict[str, Path]:
    from splatkit.splat.formats import spz, write_splat
    from splatkit.splat.formats.checkpoint import save_checkpoint

    model = source_model()
    out = {}
    for name, file in SOURCES.items():
        path = folder / file
        if name == "checkpoint":
            save_checkpoint(path, checkpoint_content(model))
        elif name in ("spz_v2", "spz_v4"):
            spz.write_spz_file(path, model.params(), version=int(name[-1]))
        else:
            write_splat(model, path, name)
        out[name] = path
    return out


# ----------------------------------------------------------------------------- damage


def _flip_bits(data: bytearray, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 16)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)


def _overwrite(data: bytearray, rng: random.Random, zero: bool = False) -> None:
    i = rng.randrange(len(data))
    n = min(rng.randint(1, 64), len(data) - i)
    data[i : i + n] = bytes(n) if zero else rng.randbytes(n)


_NUMBERS = (0, 1, -1, 2, 255, 256, 257, 299, 301, 2**31 - 1, 2**31, 2**32, 2**40, 10**12)


def _edit_ply_header(data: bytearray, rng: random.Random) -> bytes:
    end = data.find(b"end_header")
    header = data[:end].decode("ascii", "replace")
    numbers = list(re.finditer(r"\d+", header))
    lines = header.split("\n")
    choice = rng.random()
    if choice < 0.6 and numbers:  # a count, a property index, a version
        m = rng.choice(numbers)
        new = header[: m.start()] + str(rng.choice(_NUMBERS)) + header[m.end() :]
    elif choice < 0.8 and len(lines) > 3:  # a property's type
        i = rng.randrange(2, len(lines))
        if lines[i].startswith("property"):
            parts = lines[i].split()
            parts[1] = rng.choice(["uchar", "double", "int", "short", "float", "list uchar int"])
            lines[i] = " ".join(parts)
        new = "\n".join(lines)
    else:  # a line removed or duplicated
        i = rng.randrange(1, len(lines))
        if rng.random() < 0.5:
            del lines[i]
        else:
            lines.insert(i, lines[i])
        new = "\n".join(lines)
    return new.encode("ascii", "replace") + bytes(data[end:])


def _edit_spz_inflated(data: bytes, rng: random.Random) -> bytes:
    raw = bytearray(gzip.decompress(data))
    choice = rng.random()
    if choice < 0.5:  # a header field: version, count, SH degree, fractional bits, flags
        field = rng.choice([(4, "<I"), (8, "<I"), (12, "<B"), (13, "<B"), (14, "<B"), (15, "<B")])
        value = rng.choice(_NUMBERS + (3, 4, 5, 24, 0x2, 0xFF))
        size = struct.calcsize(field[1])
        raw[field[0] : field[0] + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
    elif choice < 0.75:
        _flip_bits(raw, rng)
    else:  # inflated body cut or grown
        raw = raw[: rng.randrange(len(raw))] if rng.random() < 0.5 else raw + rng.randbytes(rng.randint(1, 4096))
    return gzip.compress(bytes(raw), mtime=0)


def _edit_checkpoint(path: Path, rng: random.Random) -> bytes:
    """A checkpoint whose content is wrong but whose checksum is valid (saved again)."""
    from splatkit.splat.formats.checkpoint import save_checkpoint

    content = checkpoint_content(source_model())
    params = content["training_state"]["params"]
    name = rng.choice(list(params))
    kind = rng.randrange(6)
    if kind == 0:
        params[name] = params[name].clone().flatten()[: rng.randint(0, 50)]
    elif kind == 1:
        params[name] = params[name].clone()
        params[name].view(-1)[rng.randrange(params[name].numel())] = rng.choice([float("nan"), float("inf")])
    elif kind == 2:
        del params[name]
    elif kind == 3:
        params[name] = params[name].to(rng.choice([torch.int64, torch.uint8, torch.bool, torch.float16]))
    elif kind == 4:
        content["training_state"] = rng.choice([None, [], "params", {"params": None}, {"params": [1, 2]}])
    else:
        params[name] = params[name][: rng.randint(0, 299)]
    tmp = path.with_name(f"edit-{rng.randrange(10**9)}.ckpt")
    save_checkpoint(tmp, content)
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def damage(kind: str, data: bytes, rng: random.Random, folder: Path) -> tuple[bytes, str]:
    """``data`` damaged in one random way (see the module docstring), and how."""
    out = bytearray(data)
    if kind in ("ply", "compressed_ply") and rng.random() < 0.3:
        return _edit_ply_header(out, rng), "header edited"
    if kind in ("spz", "spz_v2") and rng.random() < 0.4:  # gzip streams (v4 is a zstd container)
        return _edit_spz_inflated(data, rng), "inflated stream edited"
    if kind == "checkpoint" and rng.random() < 0.3:
        return _edit_checkpoint(folder / "x.ckpt", rng), "content edited"
    how = rng.choice(["bits flipped", "bytes overwritten", "bytes zeroed", "cut", "bytes appended"])
    if how == "bits flipped":
        _flip_bits(out, rng)
    elif how == "bytes overwritten":
        _overwrite(out, rng)
    elif how == "bytes zeroed":
        _overwrite(out, rng, zero=True)
    elif how == "cut":
        del out[rng.randrange(len(out)) :]
    else:
        out += rng.randbytes(rng.randint(1, 4096))
    return bytes(out), how


# ----------------------------------------------------------------------------- reading, in a worker


def _worker(conn, sources: dict[str, str], memory_gb: float) -> None:
    import resource

    from splatkit.errors import SplatFileError
    from splatkit.splat.formats import read_splat

    if memory_gb > 0:
        limit = int(memory_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    reference = {k: read_splat(p).params() for k, p in sources.items()}
    while True:
        job = conn.recv()
        if job is None:
            return
        kind, path = job
        try:
            got = read_splat(path).params()
        except SplatFileError as e:
            conn.send(("clean_error", str(e)[:200]))
            continue
        except BaseException as e:  # noqa: BLE001  (what the fuzzer is looking for)
            conn.send(("other_exception", f"{type(e).__name__}: {str(e)[:300]}"))
            continue
        ref = reference[kind]
        finite = all(bool(torch.isfinite(v).all()) for v in got.values())
        same = got.keys() == ref.keys() and all(
            got[k].shape == ref[k].shape and torch.equal(got[k], ref[k]) for k in ref
        )
        if not finite:
            conn.send(("garbage_accepted", "non-finite values"))
        elif same:
            conn.send(("accepted_identical", ""))
        elif kind == "checkpoint":
            conn.send(("garbage_accepted", "a checkpoint that differs from its source loaded"))
        else:
            conn.send(("accepted_different", ""))


class Reader:
    """One worker process; a read that takes longer than ``timeout`` kills and replaces it."""

    def __init__(self, sources: dict[str, Path], timeout: float, memory_gb: float) -> None:
        self.args = ({k: str(v) for k, v in sources.items()}, memory_gb)
        self.timeout = timeout
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        self.proc.start()

    def read(self, kind: str, path: Path) -> tuple[str, str]:
        try:
            self.conn.send((kind, str(path)))
            if self.conn.poll(self.timeout + (60 if not hasattr(self, "_warm") else 0)):
                self._warm = True
                return self.conn.recv()
        except (EOFError, OSError) as e:  # the worker died (a C-level crash, the memory limit)
            self._restart()
            return "other_exception", f"worker died: {e!r}"
        self._restart()
        return "hang", f"no answer within {self.timeout} s"

    def _restart(self) -> None:
        self.proc.kill()
        self.proc.join()
        if hasattr(self, "_warm"):
            del self._warm
        self._start()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


def fuzz(per_format: int, seed: int, timeout: float, memory_gb: float, formats: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="splatkit-fuzz-") as tmp:
        folder = Path(tmp)
        sources = write_sources(folder)
        reader = Reader(sources, timeout, memory_gb)
        rng = random.Random(seed)
        results = {}
        try:
            for kind in formats:
                src = sources[kind]
                data = src.read_bytes()
                counts = dict.fromkeys(CATEGORIES, 0)
                examples: dict[str, list[str]] = {}
                different: dict[str, int] = {}  # damage that went unnoticed, by kind of damage
                for i in range(per_format):
                    path = folder / f"damaged_{i}{src.name[len('model') :]}".replace("_v2", "")
                    damaged, how = damage(kind, data, rng, folder)
                    path.write_bytes(damaged)
                    category, detail = reader.read(kind, path)
                    counts[category] += 1
                    if category == "accepted_different":
                        different[how] = different.get(how, 0) + 1
                    if category not in ("clean_error", "accepted_identical", "accepted_different"):
                        examples.setdefault(category, [])
                        if len(examples[category]) < 5:
                            examples[category].append(detail)
                    path.unlink()
                results[kind] = {"files": per_format, **counts, "accepted_different_by_damage": different}
                results[kind]["examples"] = examples
                print(f"{kind}: {counts}", file=sys.stderr)
        finally:
            reader.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-format", type=int, default=1000, help="damaged files per format (default 1000)")
    parser.add_argument("--formats", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one read may take (default 10)")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="address-space limit of the reader (0: none)")
    args = parser.parse_args()
    result = {"per_format": args.per_format, "seed": args.seed, "timeout_s": args.timeout}
    result["formats"] = fuzz(args.per_format, args.seed, args.timeout, args.memory_gb, args.formats)
    result["failures"] = sum(
        v["other_exception"] + v["hang"] + v["garbage_accepted"]
        for v in result["formats"].values()
        if "skipped" not in v
    )
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
