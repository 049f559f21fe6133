#!/usr/bin/env python3
"""Structure figures of the use-case layer (issue 23's before/after proof).

Prints, for the Rust sources under src/:
- the largest inherent impl types: methods and the files their impls span;
- for a layer folder (default src/node): the import edges between its modules
  and how many of them lie on a cycle (an import that "runs back up": module A
  uses B while B, directly or not, uses A).

Approximate by design (regexes, not a parser): comments and strings are
stripped before counting, and test-only files (tests.rs, tests_*.rs,
*_tests.rs, testing.rs) are skipped. Usage: scripts/structure.py [layer-dir] [top-n]
"""

import collections
import functools
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def strip(src):
    src = re.sub(r"//[^\n]*", "", src)
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    src = re.sub(r'r#*"(?:.|\n)*?"#*', '""', src)
    src = re.sub(r'"(?:\\.|[^"\\])*"', '""', src)
    src = re.sub(r"'(?:\\.|[^'\\])'", "' '", src)
    return src


def without_tests(src):
    """Drops `#[cfg(test)] mod x { ... }` bodies."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", src):
        if m.start() < i:
            continue
        out.append(src[i:m.start()])
        depth, j = 1, m.end()
        while j < len(src) and depth:
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            j += 1
        i = j
    out.append(src[i:])
    return "".join(out)


def impl_blocks(src):
    """(type name, body) of each inherent `impl Type {` block."""
    for m in re.finditer(r"^\s*impl(?:<[^>{]*>)?\s+([A-Za-z_][\w:]*)(?:<[^{]*>)?\s*\{", src, flags=re.M):
        depth, j = 1, m.end()
        while j < len(src) and depth:
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            j += 1
        yield m.group(1).split("::")[-1], src[m.end():j - 1]


def methods(body):
    count, depth = 0, 0
    for tok in re.finditer(r"[{}]|\bfn\s+\w+", body):
        t = tok.group(0)
        if t == "{":
            depth += 1
        elif t == "}":
            depth -= 1
        elif depth == 0:
            count += 1
    return count


@functools.lru_cache(maxsize=None)
def source(path):
    """A file's code without comments, strings or test modules (read once)."""
    return without_tests(strip(open(path, encoding="utf-8").read()))


def on_cycle(edges):
    """The edges (a, b) of `edges` on a cycle: b reaches a again."""
    graph = collections.defaultdict(set)
    for a, b in edges:
        graph[a].add(b)

    def reaches(a, b):
        seen, todo = set(), [a]
        while todo:
            x = todo.pop()
            if x == b:
                return True
            if x not in seen:
                seen.add(x)
                todo.extend(graph[x])
        return False

    return sorted(e for e in edges if reaches(e[1], e[0]))


def test_only(name):
    """Files compiled for tests only: a service's tests, the unit-test harness."""
    return name in ("tests.rs", "testing.rs") or name.startswith("tests_") or name.endswith("_tests.rs")


def rust_files(top):
    for d, _, files in os.walk(top):
        for f in files:
            if f.endswith(".rs") and not test_only(f):
                yield os.path.join(d, f)


def module_of(path, layer_dir):
    rel = os.path.relpath(path, layer_dir)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    return "::".join(rel) or "(mod)"


def main():
    layer = sys.argv[1] if len(sys.argv) > 1 else "src/node"
    top_n = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    layer_dir = os.path.join(ROOT, layer)
    per_type = collections.defaultdict(lambda: [0, set()])
    for path in rust_files(os.path.join(ROOT, "src")):
        for name, body in impl_blocks(source(path)):
            n = methods(body)
            if n:
                per_type[name][0] += n
                per_type[name][1].add(os.path.relpath(path, ROOT))
    print(f"largest types (methods, files) under src/:")
    for name, (n, files) in sorted(per_type.items(), key=lambda kv: -kv[1][0])[:top_n]:
        print(f"  {name}: {n} methods in {len(files)} files")

    crate_prefix = "crate::" + layer.replace("src/", "").replace("/", "::")
    modules = {module_of(p, layer_dir): p for p in rust_files(layer_dir)}
    top_names = {m.split("::")[0] for m in modules}
    edges = set()
    for mod, path in modules.items():
        parts = mod.split("::")
        for m in re.finditer(r"(crate::[\w:]+|super::[\w:]+)", source(path)):
            p = m.group(1)
            if p.startswith("super::"):
                base = parts[:-1]
                rest = p.split("::")
                while rest and rest[0] == "super":
                    rest = rest[1:]
                    base = base[:-1] if base and rest and rest[0] == "super" else base
                target = (base + rest)[:1] if base else rest[:1]
            elif p.startswith(crate_prefix + "::"):
                target = p[len(crate_prefix) + 2:].split("::")[:1]
            else:
                continue
            if target and target[0] in top_names and target[0] != parts[0]:
                edges.add((parts[0], target[0]))
    cyclic = on_cycle(edges)
    print(f"{layer}: {len(modules)} files, {len(top_names)} top-level modules, {len(edges)} imports between them, "
          f"{len(cyclic)} on a cycle (running back up)")
    for a, b in cyclic:
        print(f"  {a} -> {b}")
    calls_between_files(layer_dir)


def calls_between_files(layer_dir):
    """Per type of the layer: its methods called from another file of the
    layer, as file -> file edges, and those on a cycle."""
    srcs = {p: source(p) for p in rust_files(layer_dir)}
    defs = collections.defaultdict(lambda: collections.defaultdict(set))
    for p, src in srcs.items():
        for name, body in impl_blocks(src):
            for m in re.finditer(r"\bfn\s+(\w+)", body):
                defs[name][m.group(1)].add(os.path.relpath(p, layer_dir))
    for name, fns in sorted(defs.items(), key=lambda kv: -len(kv[1])):
        files = {f for fs in fns.values() for f in fs}
        if len(files) < 2:
            continue
        edges = set()
        for p, src in srcs.items():
            here = os.path.relpath(p, layer_dir)
            for m in re.finditer(r"\b(?:self|node|this|n)\.(\w+)\s*\(", src):
                edges.update((here, there) for there in fns.get(m.group(1), ()) if there != here)
        cyclic = on_cycle(edges)
        print(f"{name}: calls between its {len(files)} files: {len(edges)} edges, {len(cyclic)} on a cycle")
        for a, b in cyclic:
            print(f"  {a} -> {b}")


if __name__ == "__main__":
    main()
