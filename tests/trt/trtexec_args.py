"""trtexec's command-line rules for a build with optimization profiles, as a checker.

Restated from trtexec's option parser (``samples/common/sampleOptions.cpp``, TensorRT 10.0 to 11.1):

- arguments are ``--name=value`` or ``--name``, kept by name with their position on the command line;
  an option trtexec does not know stops it ("Unknown option");
- several profiles are given only as ``--profile=N`` immediately followed (the next one to three
  arguments, in any order) by ``--minShapes``, ``--optShapes`` and ``--maxShapes``; an index given
  twice, or a gap in the indices, is an error;
- without any ``--profile`` one group of the three flags makes the single profile; a second
  ``--minShapes``/``--optShapes``/``--maxShapes`` left over after the profiles are read is the error
  "Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed";
- a shape list is ``name:dims,name:dims`` with the name split off at the last colon and dims
  ``AxBxC``.

trtexec broadcasts a missing min/opt/max from the others with a warning; this checker is stricter
and requires all three, since a build script must state every shape it means.
"""

from __future__ import annotations

SHAPE_FLAGS = ("--minShapes", "--optShapes", "--maxShapes")

# The options a build script may use (each one is parsed by trtexec 10.0 to 11.1).
KNOWN = {
    "--onnx",
    "--saveEngine",
    "--stronglyTyped",
    "--timingCacheFile",
    "--skipInference",
    "--memPoolSize",
    "--noTF32",
    "--profile",
    *SHAPE_FLAGS,
}


class TrtexecArgError(ValueError):
    """trtexec would refuse this command line."""


def _split(argv: list[str]) -> list[tuple[str, str | None, int]]:
    """[(name, value, position)] with positions as trtexec counts them (argv[0] is the program)."""
    out = []
    for pos, arg in enumerate(argv[1:], start=1):
        name, eq, value = arg.partition("=")
        if name not in KNOWN:
            raise TrtexecArgError(f"Unknown option: {arg}")
        out.append((name, value if eq else None, pos))
    return out


def _shapes(value: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in value.split(","):
        name, colon, dims = item.rpartition(":")
        if not colon or not name:
            raise TrtexecArgError(f"shape {item!r} is not name:dims")
        try:
            shapes[name.strip("'")] = tuple(int(d) for d in dims.split("x"))
        except ValueError:
            raise TrtexecArgError(f"dims {dims!r} of {name!r} are not AxBxC") from None
    return shapes


def _profile(found: dict[str, str], where: str) -> dict[str, tuple]:
    missing = [f for f in SHAPE_FLAGS if f not in found]
    if missing:
        raise TrtexecArgError(f"{where} lacks {', '.join(missing)}")
    parsed = [_shapes(found[f]) for f in SHAPE_FLAGS]
    names = set(parsed[0])
    if any(set(p) != names for p in parsed[1:]):
        raise TrtexecArgError(f"{where}: min/opt/max name different tensors")
    return {n: (parsed[0][n], parsed[1][n], parsed[2][n]) for n in parsed[0]}


def parse_build_args(argv: list[str]) -> dict:
    """{"options": {name: value}, "profiles": [{tensor: (min, opt, max)}]}; TrtexecArgError where trtexec
    would stop."""
    args = _split(argv)
    by_pos = {pos: (name, value) for name, value, pos in args}
    used: set[int] = set()
    profiles: dict[int, dict] = {}
    for name, value, pos in args:
        if name != "--profile":
            continue
        used.add(pos)
        try:
            index = int(value or "")
        except ValueError:
            raise TrtexecArgError(f"--profile={value}: not an index") from None
        if index in profiles:
            raise TrtexecArgError("Optimization profile index cannot be the same.")
        found: dict[str, str] = {}
        nxt = pos + 1
        while nxt in by_pos and by_pos[nxt][0] in SHAPE_FLAGS and by_pos[nxt][0] not in found and len(found) < 3:
            found[by_pos[nxt][0]] = by_pos[nxt][1] or ""
            used.add(nxt)
            nxt += 1
        profiles[index] = _profile(found, f"--profile={index}")
    if profiles and sorted(profiles) != list(range(len(profiles))):
        raise TrtexecArgError(f"Found invalid or missing shape spec at profile indices {sorted(profiles)}")
    left = [(name, value, pos) for name, value, pos in args if name in SHAPE_FLAGS and pos not in used]
    if not profiles and left:
        single: dict[str, str] = {}
        for name, value, pos in left:
            if name not in single:
                single[name] = value or ""
                used.add(pos)
        profiles[0] = _profile(single, "the shape flags")
        left = [a for a in left if a[2] not in used]
    if left:
        raise TrtexecArgError("Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed.")
    options = {name: value for name, value, _ in args if name not in SHAPE_FLAGS and name != "--profile"}
    return {"options": options, "profiles": [profiles[i] for i in sorted(profiles)]}
