"""The package's layout measured and drawn: its import graph, as rooms (modules), floors and arrows.

    python tools/layout.py [--draw docs/layout.png] [--trace]

A room is a module; inside a subpackage (a wing) each module is a room of the wing, and at the top level the
wing is one room. An arrow is "A imports B" (anywhere in A, at its top or inside a function; each pair once).
A room's floor is the length of the longest chain of arrows below it (floor 0 imports nothing of mmlib), so no
arrow can run up between floors; an arrow runs back up where it goes against the declared order of the wings
(WINGS: each wing may import only the wings before it and the root's shared rooms).

--trace follows a configuration from ``python -m mmlib train`` into the trainer: every call that receives it
(or one of its text values: method, dataset, data root, ...) until the first epoch starts, as a walk through
the modules; a climb back up is a step of the walk to a higher floor of the top level than the step before.
"""

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mmlib"
WINGS = ["data", "train", "sweep", "report"]  # the declared order: each wing imports only those before it


def modules() -> dict[str, Path]:
    """Dotted module names below mmlib (mmlib.x, mmlib.wing.x), packages by their __init__."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The mmlib modules ``name`` imports, anywhere in it (the longest known prefix of each imported name)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "mmlib":
                found.add(target)
    return found


def room(name: str, inside: str | None) -> str | None:
    """The room a module is at a level: inside a wing, its modules; at the top, root modules and whole wings."""
    parts = name.split(".")
    if inside is None:
        return ".".join(parts[:2]) if len(parts) > 1 else None
    return name if name.startswith(inside + ".") and len(parts) == 3 else None


def graph(inside: str | None = None) -> dict[str, set[str]]:
    found = modules()
    edges = defaultdict(set)
    for name, path in found.items():
        here = room(name, inside)
        if here is None:
            continue
        edges[here]
        for target in imports(name, path, set(found)):
            there = room(target, inside)
            if there is not None and there != here:
                edges[here].add(there)
    return dict(edges)


def floors(edges: dict[str, set[str]]) -> dict[str, int]:
    level = {}

    def floor(node, seen=()):
        if node in seen:
            raise ValueError(f"import loop: {' -> '.join(seen + (node,))}")
        if node not in level:
            level[node] = 1 + max((floor(t, seen + (node,)) for t in edges.get(node, ())), default=-1)
        return level[node]

    for node in edges:
        floor(node)
    return level


def wing_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in WINGS) else None


def back_up(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Arrows from a wing to a wing declared above it."""
    found = []
    for source, targets in edges.items():
        for target in targets:
            a, b = wing_of(source), wing_of(target)
            if a in WINGS and b in WINGS and WINGS.index(b) > WINGS.index(a):
                found.append((source, target))
    return sorted(found)


def describe(edges: dict[str, set[str]], title: str) -> str:
    level = floors(edges)
    arrows = sum(len(t) for t in edges.values())
    up = back_up(edges)
    lines = [f"{title}: {len(edges)} rooms on {max(level.values()) + 1} floors, {arrows} arrows, "
             f"{len(up)} running back up" + (f" ({', '.join(f'{a} -> {b}' for a, b in up)})" if up else "")]
    for f in range(max(level.values()), -1, -1):
        lines.append(f"  floor {f:2d}: " + ", ".join(sorted(n.removeprefix("mmlib.") for n, l in level.items() if l == f)))
    return "\n".join(lines)


def trace() -> str:
    """Follow a configuration from `python -m mmlib train` to the first epoch (digits, one epoch, in a temp folder):
    every call into mmlib that receives the configuration (a RunConfig, a list of them, a parameters dict, or an
    object holding one as .config, .configs or .first) or one of its text values (method, dataset, data root,
    network, ...), as a walk through the top level's rooms (a wing's modules each a room of their own)."""
    import tempfile

    from mmlib import __main__ as cli
    from mmlib.config import RunConfig

    level = floors(graph())
    walk, texts = [], set()

    class FirstEpoch(Exception):
        pass

    def carries(value) -> bool:
        if isinstance(value, RunConfig):
            texts.update(v for v in value.to_dict().values() if isinstance(v, str))
            return True
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, RunConfig) for v in value):
            return True
        if isinstance(value, dict) and {"method", "dataset", "seed"} <= set(value):
            return True
        return isinstance(value, str) and value in texts

    def profile(frame, event, arg):
        module = frame.f_globals.get("__name__", "")
        if event != "call" or not module.startswith("mmlib"):
            return
        if module.endswith(".step") and frame.f_code.co_name == "epoch":
            raise FirstEpoch
        code = frame.f_code
        values = [frame.f_locals.get(n) for n in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]]
        held = [getattr(v, a, None) for v in values[:1] for a in ("config", "configs", "first")]
        if any(carries(v) for v in values + held) and (not walk or walk[-1] != module):
            walk.append(module)

    with tempfile.TemporaryDirectory() as tmp:
        sys.setprofile(profile)
        try:
            cli.main(["train", "--run-dir", f"{tmp}/r", "--dataset", "digits", "--ratio", "10", "--arch", "resnet8",
                      "--epochs", "1", "--quiet"])
        except FirstEpoch:
            pass
        finally:
            sys.setprofile(None)
    top = [room(m, None) or m for m in walk]  # each step's room at the top level: the module, or its wing
    climbs = sum(level.get(b, -1) > level.get(a, -1) for a, b in zip(top, top[1:]))
    entered = defaultdict(int)
    for module in walk:
        entered[module.removeprefix("mmlib.")] += 1
    return (f"a configuration from `python -m mmlib train` to the first epoch crosses {len(set(walk))} rooms "
            f"(modules), with {climbs} climbs back up between the top level's floors, in {len(walk)} steps; rooms "
            f"entered: {', '.join(f'{m} {n}x' for m, n in sorted(entered.items(), key=lambda e: -e[1]))}\n  "
            + " > ".join(m.removeprefix("mmlib.") for m in walk))


def draw(path: str) -> None:
    """The top level and each wing, floors bottom to top, arrows as lines from importer down to imported."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [None] + [f"mmlib.{w}" for w in WINGS if (PACKAGE / w).is_dir()]
    fig, axes = plt.subplots(1, len(levels), figsize=(5.5 * len(levels), 7), squeeze=False)
    for ax, inside in zip(axes[0], levels):
        edges = graph(inside)
        level = floors(edges)
        rows = defaultdict(list)
        for node in sorted(level, key=lambda n: (wing_of(n) or "", n)):
            rows[level[node]].append(node)
        where = {n: ((i + 0.5) / len(row), f) for f, row in rows.items() for i, n in enumerate(row)}
        for source, targets in edges.items():
            for target in targets:
                (x0, y0), (x1, y1) = where[source], where[target]
                up = (source, target) in back_up({source: {target}})
                ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                            arrowprops=dict(arrowstyle="->", color="tab:red" if up else "0.6", lw=0.7, alpha=0.8))
        for node, (x, y) in where.items():
            label = node.removeprefix((inside or "mmlib") + ".")
            wing = label in WINGS
            ax.text(x, y, label, ha="center", va="center", fontsize=8, fontweight="bold" if wing else "normal",
                    bbox=dict(boxstyle="round", fc="lightyellow" if wing else "white", ec="0.4"))
        arrows = sum(len(t) for t in edges.values())
        ax.set_title(f"{'mmlib (top level)' if inside is None else inside}\n{len(edges)} rooms, "
                     f"{max(level.values()) + 1} floors, {arrows} arrows", fontsize=10)
        ax.set_ylim(-0.6, max(level.values()) + 0.6)
        ax.set_xlim(0, 1)
        ax.set_ylabel("floor (longest import chain below)")
        ax.set_xticks([])
        ax.set_yticks(range(max(level.values()) + 1))
    fig.suptitle("mmlib's import graph: an arrow from a module to one it imports (red: against the wings' order)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draw", metavar="PNG", help="draw the top level and each wing into this picture")
    parser.add_argument("--trace", action="store_true", help="follow a configuration from `train` to its first epoch")
    args = parser.parse_args()
    print(describe(graph(), "top level"))
    for wing in WINGS:
        if (PACKAGE / wing).is_dir():
            print(describe(graph(f"mmlib.{wing}"), f"wing {wing}"))
    if args.trace:
        print(trace())
    if args.draw:
        draw(args.draw)
        print(f"drew {args.draw}")


if __name__ == "__main__":
    main()
